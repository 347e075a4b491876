using KestrelProactor.Internal;
using static KestrelProactor.Interop.Linux.Interop;

namespace KestrelProactor.IoUring;

internal sealed partial class IoUringDispatcher
{
    /// <summary>The dispatcher thread's kernel thread id, known once its loop has started (for tests and diagnostics).</summary>
    public int NativeThreadId { get; private set; }

    /// <summary>The CPU this dispatcher's thread is pinned to (<see cref="ProactorTransportOptions.DispatcherAffinity"/>), or -1.</summary>
    public int PinnedCpu { get; private set; } = -1;

    /// <summary>
    /// Dispatcher thread, before the ring is made: with <see cref="ProactorTransportOptions.DispatcherAffinity"/>,
    /// dispatcher n runs on the n-th CPU the process may use (wrapping round), so each ring's completions, and the
    /// socket work the kernel does for them on that thread, stay on one core. A CPU set the kernel refuses (a
    /// cpuset changed under the process) leaves the thread where it was, with a warning.
    /// </summary>
    private void ApplyAffinity()
    {
        NativeThreadId = Sys.gettid();
        if (!Options.DispatcherAffinity)
        {
            return;
        }

        List<int> cpus = Sys.GetThreadCpus(out int errno);
        int result = errno;
        int cpu = -1;
        if (cpus.Count != 0)
        {
            cpu = cpus[Id % cpus.Count];
            result = Sys.SetThreadCpu(cpu);
        }

        if (result != 0)
        {
            ProactorLog.DispatcherAffinityFailed(Logger, Id, cpu, Errno.Name(result));
            return;
        }

        PinnedCpu = cpu;
        ProactorLog.DispatcherPinned(Logger, Id, cpu);
    }
}
