using KestrelProactor.Dispatching;

namespace KestrelProactor.IoUring;

/// <summary>The io_uring backend: one <see cref="IoUringDispatcher"/> (ring and thread) per configured dispatcher.</summary>
internal sealed class IoUringBackend : ProactorBackend
{
    private IoUringBackend(IoUringDispatcher[] dispatchers, string kernelVersion)
        : base(dispatchers)
    {
        KernelVersion = kernelVersion;
        IoUringDispatcher first = dispatchers[0];
        string refused = first.RefusedFeatures.Count == 0 ? string.Empty : "; not available: " + string.Join(", ", first.RefusedFeatures);
        FeatureSummary = string.Join(", ", first.FeaturesInUse) + refused;
    }

    public override string Name => "io_uring";

    public override string KernelVersion { get; }

    public override string FeatureSummary { get; }

    public static new bool TryStart(ProactorBackendContext context, out ProactorBackend? backend, out string? reason, out Exception? exception)
    {
        backend = null;
        reason = null;
        exception = null;
        int count = context.Options.DispatcherCount;
        var dispatchers = new IoUringDispatcher[count];
        var started = new List<IoUringDispatcher>();
        try
        {
            for (int i = 0; i < count; i++)
            {
                try
                {
                    dispatchers[i] = new IoUringDispatcher(i, context);
                }
                catch
                {
                    // A dispatcher holds its pool from its construction (the memory-pool factory may be what threw):
                    // those built so far, never started, give theirs back.
                    ProactorDispatcher.ReleaseUnstarted(dispatchers.AsSpan(0, i));
                    throw;
                }
            }

            var tasks = dispatchers.Select(d => d.StartAsync()).ToArray();
            for (int i = 0; i < count; i++)
            {
                try
                {
                    tasks[i].GetAwaiter().GetResult();
                    started.Add(dispatchers[i]);
                }
                catch (Exception ex)
                {
                    // The first failure is the one reported; every later one is caught too, so the dispatchers that
                    // did start are all stopped below instead of left running.
                    exception ??= ex;
                }
            }

            if (exception is not null)
            {
                reason = exception is IoUringException ? exception.Message : $"io_uring setup failed: {exception.Message}";
                foreach (IoUringDispatcher dispatcher in started)
                {
                    dispatcher.StopAsync().GetAwaiter().GetResult();
                }

                return false;
            }

            backend = new IoUringBackend(dispatchers, IoUring.KernelVersion.Release);
            return true;
        }
        catch (Exception ex)
        {
            exception = ex;
            reason = $"io_uring setup failed: {ex.Message}";
            return false;
        }
    }
}
