using KestrelProactor.Dispatching;

namespace KestrelProactor.IoUring;

/// <summary>
/// A seeded plan of faults injected between io_uring dispatchers and the kernel, for the fault-injection runs
/// (tests/KestrelProactor.FaultHost) and tests. Off unless a test sets <see cref="Current"/> before the transport
/// starts: each dispatcher created then takes its own injector (<see cref="IoUringFaultInjector"/>), seeded from this
/// seed and its id, and a dispatcher created while it is null has none and pays one null check per completion.
/// <para>
/// The books a run's checks read (faults by kind, touched client ports, kills) are the shared
/// <see cref="ProactorFaultPlan"/>'s. The fault families (<see cref="ProactorFaultPlan.Only"/>): enter, hold, split,
/// receive-error, enobufs-more, send-error, accept, close, shutdown, send-eagain, short-send, zero-copy-refused, receive-enobufs,
/// receive-ecanceled.
/// </para>
/// </summary>
internal sealed class IoUringFaultPlan(int seed, double rate) : ProactorFaultPlan(seed, rate, killModes: 6)
{
    /// <summary>The plan the next dispatchers take; null (the default) injects nothing.</summary>
    internal static IoUringFaultPlan? Current { get; set; }

    public IoUringKillMode KillMode => (IoUringKillMode)KillModeIndex;

    public override string KillModeName => KillMode.ToString();

    internal IoUringFaultInjector CreateInjector(int dispatcherId)
        // Injected results are NOPs that carry them (IORING_NOP_INJECT_RESULT): an older kernel would answer 0 instead.
        => KernelVersion.AtLeast(6, 10)
            ? new(this, dispatcherId)
            : throw new PlatformNotSupportedException("Fault injection needs Linux 6.10 or later (NOPs that inject their result).");
}

/// <summary>How a plan kills its dispatcher.</summary>
internal enum IoUringKillMode
{
    /// <summary>No kill.</summary>
    None,

    /// <summary>The loop throws as on a ring error, after a number of completions.</summary>
    RingError,

    /// <summary>The kernel's count of dropped completions moves (as with a full CQ and no memory), after a number of completions.</summary>
    DroppedCompletion,

    /// <summary>An enter returns EBADR (the kernel's report of a dropped completion), after a number of completions.</summary>
    EnterDropped,

    /// <summary>The loop throws as on a ring error in the first pass after a stop was asked for.</summary>
    RingErrorDuringStop,

    /// <summary>No kill (weights kills down to about half of the plans that allow them).</summary>
    None2,
}
