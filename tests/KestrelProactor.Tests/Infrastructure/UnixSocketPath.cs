using System.Net.Sockets;

namespace KestrelProactor.Tests.Infrastructure;

/// <summary>
/// A path for one Unix domain socket listener, in a temporary directory of its own (so no two tests, and no stale
/// socket file of an earlier run, can meet), deleted with everything in it on dispose. Short enough for sun_path
/// (108 bytes) under the usual temporary directories.
/// </summary>
internal sealed class UnixSocketPath : IDisposable
{
    private readonly string _directory = Directory.CreateTempSubdirectory("kp-uds-").FullName;

    public UnixSocketPath()
    {
        Path = System.IO.Path.Combine(_directory, "listener.sock");
    }

    public string Path { get; }

    public UnixDomainSocketEndPoint EndPoint => new(Path);

    public void Dispose() => Directory.Delete(_directory, recursive: true);
}
