using static KestrelProactor.Interop.Linux.Interop.IoUring;

namespace KestrelProactor.IoUring;

/// <summary>
/// One dispatcher's share of an <see cref="IoUringFaultPlan"/>: its random stream (seeded from the plan's seed and the
/// dispatcher's id) and the completions it holds back. Dispatcher thread only. What each fault does to the
/// dispatcher is in <c>IoUringDispatcher.Faults.cs</c>; this type only decides.
/// </summary>
internal sealed class IoUringFaultInjector
{
    private readonly Random _random;
    // Completions held back, in arrival order, with the pass from which they may go on and the key that keeps one
    // owner's completions in their order (an owner's completions are never reordered among themselves).
    private readonly List<(io_uring_cqe Cqe, ulong Key, long DuePass)> _held = new();
    // Zero-copy sends a fault turned into NOPs, by user data: their results get F_MORE and a notification follows.
    private readonly HashSet<ulong> _zeroCopyNops = new();

    public IoUringFaultInjector(IoUringFaultPlan plan, int dispatcherId)
    {
        Plan = plan;
        DispatcherId = dispatcherId;
        _random = new Random(unchecked(plan.Seed * 7919 + dispatcherId * 104729 + 17));
    }

    public IoUringFaultPlan Plan { get; }

    public int DispatcherId { get; }

    /// <summary>Passes of the loop seen so far.</summary>
    public long Pass { get; private set; }

    /// <summary>Completions handled so far.</summary>
    public long Completions { get; set; }

    /// <summary>True once this dispatcher's kill went in.</summary>
    public bool Killed { get; set; }

    public bool HasHeld => _held.Count != 0;

    public int HeldCount => _held.Count;

    public void BeginPass() => Pass++;

    /// <summary>True with the plan's rate.</summary>
    public bool Roll() => _random.NextDouble() < Plan.Rate;

    /// <summary>A number in [min, max).</summary>
    public int Next(int min, int max) => _random.Next(min, max);

    public T Pick<T>(params T[] choices) => choices[_random.Next(choices.Length)];

    /// <summary>Whether this dispatcher is the one the plan kills, and how.</summary>
    public IoUringKillMode KillMode
        => Plan.AllowKill && !Killed && DispatcherId == Plan.KillDispatcher ? Plan.KillMode : IoUringKillMode.None;

    /// <summary>A zero-copy send (by its user data) went out as a NOP that fails it.</summary>
    public void NoteZeroCopyNop(ulong userData) => _zeroCopyNops.Add(userData);

    /// <summary>Whether this completion is the result of such a NOP (once).</summary>
    public bool TakeZeroCopyNop(ulong userData) => _zeroCopyNops.Remove(userData);

    public bool IsHeld(ulong key)
    {
        foreach (var entry in _held)
        {
            if (entry.Key == key)
            {
                return true;
            }
        }

        return false;
    }

    /// <summary>Holds a completion back for 1-4 passes, or as long as the last held completion of the same key.</summary>
    public void Hold(in io_uring_cqe cqe, ulong key)
    {
        long due = Pass + _random.Next(1, 5);
        foreach (var entry in _held)
        {
            if (entry.Key == key)
            {
                due = Math.Max(due, entry.DuePass);
            }
        }

        _held.Add((cqe, key, due));
    }

    /// <summary>Takes the held completions that are due (all of them when <paramref name="all"/>), in arrival order.</summary>
    public void TakeDue(List<io_uring_cqe> destination, bool all)
    {
        int kept = 0;
        for (int i = 0; i < _held.Count; i++)
        {
            var entry = _held[i];
            if (all || entry.DuePass <= Pass)
            {
                destination.Add(entry.Cqe);
            }
            else
            {
                _held[kept++] = entry;
            }
        }

        _held.RemoveRange(kept, _held.Count - kept);
    }
}
