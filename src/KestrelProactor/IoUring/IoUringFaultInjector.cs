using KestrelProactor.Dispatching;
using static KestrelProactor.Interop.Linux.Interop.IoUring;

namespace KestrelProactor.IoUring;

/// <summary>
/// One io_uring dispatcher's share of an <see cref="IoUringFaultPlan"/> (see <see cref="ProactorFaultInjector{TCompletion}"/>):
/// it holds CQEs back. What each fault does to the dispatcher is in <c>IoUringDispatcher.Faults.cs</c>; this type only decides.
/// </summary>
internal sealed class IoUringFaultInjector(IoUringFaultPlan plan, int dispatcherId) : ProactorFaultInjector<io_uring_cqe>(plan, dispatcherId)
{
    public IoUringFaultPlan Plan { get; } = plan;

    /// <summary>Whether this dispatcher is the one the plan kills, and how.</summary>
    public IoUringKillMode KillMode => MayKill ? Plan.KillMode : IoUringKillMode.None;
}
