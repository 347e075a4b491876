using System.Collections.Concurrent;
using System.Diagnostics;

namespace KestrelProactor.IoUring;

/// <summary>
/// A seeded plan of faults injected between io_uring dispatchers and the kernel, for the fault-injection runs
/// (tests/KestrelProactor.FaultHost) and tests. Off unless a test sets <see cref="Current"/> before the transport
/// starts: each dispatcher created then takes its own injector (<see cref="IoUringFaultInjector"/>), seeded from this
/// seed and its id, and a dispatcher created while it is null has none and pays one null check per completion.
/// <para>
/// The plan also keeps what a run's checks need: how many faults went in, of which kinds, which client ports a fault
/// touched (a connection whose client port is listed may end with an error; any other must deliver every byte), and
/// which dispatchers it killed on purpose.
/// </para>
/// </summary>
internal sealed class IoUringFaultPlan
{
    private readonly ConcurrentDictionary<string, long> _counts = new();
    private readonly ConcurrentDictionary<int, string> _touchedPorts = new();
    private readonly ConcurrentDictionary<int, long> _killed = new();

    public IoUringFaultPlan(int seed, double rate)
    {
        Seed = seed;
        Rate = rate;
        var random = new Random(seed);
        // At most one dispatcher is killed, and only when the plan asks for kills: a run needs a dispatcher that lives.
        KillMode = (IoUringKillMode)random.Next(0, 6);
        KillDispatcher = random.Next(0, 2);
        KillAfterCompletions = random.Next(20, 400);
    }

    /// <summary>The plan the next dispatchers take; null (the default) injects nothing.</summary>
    internal static IoUringFaultPlan? Current { get; set; }

    public int Seed { get; }

    /// <summary>The chance, per eligible event (a completion, a submission, an enter), that a fault goes in.</summary>
    public double Rate { get; }

    /// <summary>Whether this plan may kill a dispatcher (only with two or more: one must live).</summary>
    public bool AllowKill { get; init; }

    public IoUringKillMode KillMode { get; }

    public int KillDispatcher { get; }

    public long KillAfterCompletions { get; }

    /// <summary>
    /// The fault families this plan may inject (null: all): enter, hold, split, receive-error, enobufs-more, send-error,
    /// accept, close, shutdown, send-eagain, short-send, zero-copy-refused, receive-enobufs, receive-ecanceled. For narrowing a failing seed down.
    /// </summary>
    public IReadOnlySet<string>? Only { get; init; }

    /// <summary>Whether the plan injects faults of <paramref name="family"/>.</summary>
    public bool Allows(string family) => Only is null || Only.Contains(family);

    /// <summary>Where a plan reports what a kill found (for narrowing a failure down); null: nowhere.</summary>
    public Action<string>? Trace { get; init; }

    /// <summary>Faults injected so far, of every kind.</summary>
    public long Injected => _counts.Values.Sum();

    public IReadOnlyDictionary<string, long> Counts => _counts;

    /// <summary>Client ports (the peers' ports) of connections a fault touched, with the first fault's name.</summary>
    public IReadOnlyDictionary<int, string> TouchedPorts => _touchedPorts;

    /// <summary>Dispatchers killed on purpose, with the <see cref="Stopwatch"/> timestamp of the kill.</summary>
    public IReadOnlyDictionary<int, long> Killed => _killed;

    internal IoUringFaultInjector CreateInjector(int dispatcherId)
        // Injected results are NOPs that carry them (IORING_NOP_INJECT_RESULT): an older kernel would answer 0 instead.
        => KernelVersion.AtLeast(6, 10)
            ? new(this, dispatcherId)
            : throw new PlatformNotSupportedException("Fault injection needs Linux 6.10 or later (NOPs that inject their result).");

    internal void Count(string fault) => _counts.AddOrUpdate(fault, 1, static (_, n) => n + 1);

    internal void Touch(int port, string fault)
    {
        if (port > 0)
        {
            _touchedPorts.TryAdd(port, fault);
        }
    }

    internal void RecordKill(int dispatcherId) => _killed.TryAdd(dispatcherId, Stopwatch.GetTimestamp());
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
