using System.Runtime.InteropServices;

namespace KestrelProactor;

/// <summary>
/// Present on every connection the proactor transport serves: which backend and dispatcher run it, and its
/// socket descriptor (there is no <see cref="System.Net.Sockets.Socket"/> object to expose).
/// </summary>
public interface IProactorConnectionFeature
{
    /// <summary>The native backend: <c>"io_uring"</c> or <c>"iocp"</c>.</summary>
    string Backend { get; }

    /// <summary>The index of the dispatcher (ring or completion port) that runs this connection.</summary>
    int DispatcherId { get; }

    /// <summary>The connection's socket. Owned by the transport: do not close it.</summary>
    SafeHandle SocketHandle { get; }
}
