using KestrelProactor.Dispatching;

namespace KestrelProactor.Iocp;

/// <summary>
/// A seeded plan of faults injected between IOCP dispatchers and the completion port, for the fault-injection runs
/// (tests/KestrelProactor.FaultHost under Wine) and tests. Off unless a test sets <see cref="Current"/> before the
/// transport starts: each dispatcher created then takes its own <see cref="IocpFaultInjector"/>, and one created while
/// it is null has none and pays one null check per completion, per submission and per dequeue.
/// <para>
/// The books a run's checks read are the shared <see cref="ProactorFaultPlan"/>'s. The fault families
/// (<see cref="ProactorFaultPlan.Only"/>): hold, receive-error, receive-aborted, send-error, short-send,
/// short-receive, sync-error, accept, shutdown.
/// </para>
/// </summary>
internal sealed class IocpFaultPlan(int seed, double rate) : ProactorFaultPlan(seed, rate, killModes: 5)
{
    /// <summary>The plan the next dispatchers take; null (the default) injects nothing.</summary>
    internal static IocpFaultPlan? Current { get; set; }

    public IocpKillMode KillMode => (IocpKillMode)KillModeIndex;

    public override string KillModeName => KillMode.ToString();

    internal IocpFaultInjector CreateInjector(int dispatcherId) => new(this, dispatcherId);
}

/// <summary>How a plan kills its dispatcher: <c>GetQueuedCompletionStatusEx</c> fails, as it does when the port is gone.</summary>
internal enum IocpKillMode
{
    /// <summary>No kill.</summary>
    None,

    /// <summary>The dequeue fails with ERROR_INVALID_HANDLE, after a number of completions.</summary>
    InvalidHandle,

    /// <summary>The dequeue fails with ERROR_ABANDONED_WAIT_0 (the port was closed under the wait), after a number of completions.</summary>
    AbandonedWait,

    /// <summary>The dequeue fails with ERROR_INVALID_HANDLE in the first pass after a stop was asked for.</summary>
    InvalidHandleDuringStop,

    /// <summary>No kill (weights kills down to about half of the plans that allow them).</summary>
    None2,
}

/// <summary>A completion as the IOCP dispatcher handles it (from a packet or a result known at submission), held back whole.</summary>
internal readonly record struct IocpCompletion(ulong UserData, IoResult Result);

/// <summary>
/// One IOCP dispatcher's share of an <see cref="IocpFaultPlan"/> (see <see cref="ProactorFaultInjector{TCompletion}"/>).
/// What each fault does is in <c>IocpDispatcher.Faults.cs</c>; this type only decides.
/// </summary>
internal sealed class IocpFaultInjector(IocpFaultPlan plan, int dispatcherId) : ProactorFaultInjector<IocpCompletion>(plan, dispatcherId)
{
    public IocpFaultPlan Plan { get; } = plan;

    /// <summary>Whether this dispatcher is the one the plan kills, and how.</summary>
    public IocpKillMode KillMode => MayKill ? Plan.KillMode : IocpKillMode.None;
}
