using System.Runtime.InteropServices;

namespace KestrelProactor.Dispatching;

/// <summary>
/// A started native backend: its dispatchers and what it learned about the kernel. One per factory; every
/// listener of that factory shares its dispatchers.
/// </summary>
internal abstract class ProactorBackend : IAsyncDisposable
{
    private int _next = -1;

    protected ProactorBackend(ProactorDispatcher[] dispatchers)
    {
        Dispatchers = dispatchers;
    }

    public abstract string Name { get; }

    public ProactorDispatcher[] Dispatchers { get; }

    public abstract string KernelVersion { get; }

    public abstract string FeatureSummary { get; }

    /// <summary>
    /// The dispatchers in turn: accepted connections and listeners spread over every ring, passing over one that
    /// has failed or ended. If all have, the last one tried is returned; a connection it is given releases itself at once.
    /// </summary>
    public ProactorDispatcher NextDispatcher()
    {
        ProactorDispatcher dispatcher = Dispatchers[0];
        for (int attempt = 0; attempt < Dispatchers.Length; attempt++)
        {
            uint index = (uint)Interlocked.Increment(ref _next);
            dispatcher = Dispatchers[index % (uint)Dispatchers.Length];
            if (!dispatcher.HasFailed && !dispatcher.HasEnded)
            {
                break;
            }
        }

        return dispatcher;
    }

    /// <summary>
    /// Starts the backend this platform has. On failure <paramref name="reason"/> says why in a few words
    /// ("io_uring_setup failed: EPERM (denied by seccomp or kernel.io_uring_disabled)").
    /// </summary>
    public static bool TryStart(ProactorBackendContext context, out ProactorBackend? backend, out string? reason, out Exception? exception)
    {
        backend = null;
        exception = null;
        if (OperatingSystem.IsLinux())
        {
            return IoUring.IoUringBackend.TryStart(context, out backend, out reason, out exception);
        }

        if (OperatingSystem.IsWindows())
        {
            return Iocp.IocpBackend.TryStart(context, out backend, out reason, out exception);
        }

        reason = $"no proactor backend exists for {RuntimeInformation.OSDescription} yet";
        return false;
    }

    /// <summary>Stops every dispatcher at once: a stop that runs out of time costs one deadline, not one per dispatcher.</summary>
    public async ValueTask DisposeAsync()
    {
        await Task.WhenAll(Dispatchers.Select(static d => d.StopAsync())).ConfigureAwait(false);
    }
}
