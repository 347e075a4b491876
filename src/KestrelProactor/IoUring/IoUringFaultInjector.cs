using KestrelProactor.Dispatching;
using static KestrelProactor.Interop.Linux.Interop.IoUring;

namespace KestrelProactor.IoUring;

/// <summary>
/// One io_uring dispatcher's share of an <see cref="IoUringFaultPlan"/> (see <see cref="ProactorFaultInjector{TCompletion}"/>):
/// it holds CQEs back. What each fault does to the dispatcher is in <c>IoUringDispatcher.Faults.cs</c>; this type only decides.
/// </summary>
internal sealed class IoUringFaultInjector(IoUringFaultPlan plan, int dispatcherId) : ProactorFaultInjector<io_uring_cqe>(plan, dispatcherId)
{
    // Zero-copy sends a fault turned into NOPs, by user data: their results get F_MORE and a notification follows.
    private readonly HashSet<ulong> _zeroCopyNops = new();

    public IoUringFaultPlan Plan { get; } = plan;

    /// <summary>Whether this dispatcher is the one the plan kills, and how.</summary>
    public IoUringKillMode KillMode => MayKill ? Plan.KillMode : IoUringKillMode.None;

    /// <summary>A zero-copy send (by its user data) went out as a NOP that fails it.</summary>
    public void NoteZeroCopyNop(ulong userData) => _zeroCopyNops.Add(userData);

    /// <summary>Whether this completion is the result of such a NOP (once).</summary>
    public bool TakeZeroCopyNop(ulong userData) => _zeroCopyNops.Remove(userData);
}
