namespace KestrelProactor.Dispatching;

/// <summary>
/// A started native backend: its dispatchers and what it learned about the kernel. Stub until the backends land.
/// </summary>
internal abstract class ProactorBackend : IAsyncDisposable
{
    public abstract string Name { get; }
    public abstract ProactorDispatcher[] Dispatchers { get; }
    public abstract string KernelVersion { get; }
    public abstract string FeatureSummary { get; }

    public static bool TryStart(ProactorBackendContext context, out ProactorBackend? backend, out string? reason, out Exception? exception)
    {
        backend = null;
        reason = "the io_uring backend is not built yet";
        exception = null;
        return false;
    }

    public abstract ValueTask DisposeAsync();
}
