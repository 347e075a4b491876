using System.IO.Pipelines;

namespace KestrelProactor.Dispatching;

/// <summary>
/// Wake-ups owed to a sleeping dispatcher by the thread pool. In thread-pool mode, each response's flush on a pool
/// thread schedules the output read here; when the dispatcher sleeps, the flush would pay a system call and the
/// dispatcher a context switch for that one response, then sleep again before the next handler flushes. When the pool
/// has other work queued (the other connections' requests, which flush in turn), the first flush instead leaves the
/// wake-up to a pool work item queued behind that work, and the flushes made meanwhile ride on it: one wake-up, and
/// one pass that sends them all. The dispatcher drops the debt whenever it runs a pass (it sees the queue then), so
/// a dispatcher that woke for a completion meanwhile costs the pool item nothing. Where the pool is idle the flush
/// wakes the dispatcher at once, as before.
/// </summary>
internal abstract partial class ProactorDispatcher
{
    // 1 while a pool work item is queued that will wake this dispatcher if it still sleeps.
    private int _wakeupOwed;

    // Owed wake-ups queued on the pool and not yet run, all dispatchers together: the pool's queued work counts
    // them, and they are not work whose flushes could ride on a wake-up.
    private static int s_owedWakeupsQueued;
    private PayOwedWakeupItem? _payOwedWakeup;
    private long _wakeups;
    private long _wakeupsOwed;
    private PipeScheduler? _outputScheduler;

    /// <summary>Tests only: replaces the check that the thread pool has other work queued, for the dispatchers it answers (non-null) for.</summary>
    internal static Func<ProactorDispatcher, bool?>? TestPoolHasQueuedWork { get; set; }

    /// <summary>
    /// Tests only: takes the owed wake-up's work item instead of the thread pool (when it returns true), to run it when
    /// the test chooses.
    /// </summary>
    internal static Func<ProactorDispatcher, Action, bool>? TestQueueOwedWakeup { get; set; }

    /// <summary>Tests only: whether the loop counts itself asleep (read racily).</summary>
    internal bool IsSleepingForTests => Volatile.Read(ref _sleeping) == 1;

    /// <summary>Wake-ups this dispatcher was sent from other threads (for tests).</summary>
    public long Wakeups => Interlocked.Read(ref _wakeups);

    /// <summary>Flushes that left the wake-up to a pool work item instead of waking at once (for tests).</summary>
    public long WakeupsOwed => Interlocked.Read(ref _wakeupsOwed);

    /// <summary>Whether this backend's pool-thread flushes may owe their wake-up (see the type's notes).</summary>
    protected virtual bool CoalescesPoolWakeups => false;

    /// <summary>
    /// The scheduler of the output pipes' reader: this dispatcher, through which a flush on a pool thread may owe
    /// its wake-up. In inline mode the application runs on the dispatcher and flushes there; the plain dispatcher.
    /// </summary>
    public PipeScheduler OutputScheduler
        => _outputScheduler ??= CoalescesPoolWakeups && !Options.UnsafePreferInlineScheduling ? new CoalescingScheduler(this) : this;

    /// <summary>Wakes the dispatcher if it counts itself asleep; of several callers, only the one that clears the flag wakes it.</summary>
    private void WakeIfSleeping()
    {
        if (Volatile.Read(ref _sleeping) == 1 && Interlocked.Exchange(ref _sleeping, 0) == 1)
        {
            Interlocked.Increment(ref _wakeups);
            Wake();
        }
    }

    private bool ShouldOweWakeup()
        => Thread.CurrentThread.IsThreadPoolThread
           && (TestPoolHasQueuedWork?.Invoke(this) ?? System.Threading.ThreadPool.PendingWorkItemCount > Volatile.Read(ref s_owedWakeupsQueued));

    /// <summary>
    /// The dispatcher sleeps (or is about to) and the caller's item is queued: make sure a pool work item will wake it.
    /// If one is already queued, the CAS (a full fence, like the enqueue before it) orders this item before that
    /// item's own exchange of the flag, so the item sees the dispatcher still asleep, and wakes it, unless the
    /// dispatcher woke meanwhile and will see this item before it sleeps again.
    /// </summary>
    private void OweWakeup()
    {
        if (Interlocked.CompareExchange(ref _wakeupOwed, 1, 0) != 0)
        {
            return;
        }

        Interlocked.Increment(ref _wakeupsOwed);
        if (TestQueueOwedWakeup?.Invoke(this, PayOwedWakeup) == true)
        {
            return;
        }

        // The global queue: behind the work already queued, whose flushes then need no wake-up of their own.
        Interlocked.Increment(ref s_owedWakeupsQueued);
        System.Threading.ThreadPool.UnsafeQueueUserWorkItem(_payOwedWakeup ??= new PayOwedWakeupItem(this), preferLocal: false);
    }

    private void PayOwedWakeup()
    {
        // Dropped by the dispatcher if it ran a pass meanwhile: it saw every item queued before the drop.
        if (Interlocked.Exchange(ref _wakeupOwed, 0) == 1)
        {
            WakeIfSleeping();
        }
    }

    private void ClearOwedWakeup()
    {
        if (Volatile.Read(ref _wakeupOwed) != 0)
        {
            // Exchange: a full fence before the queue is read, so an item whose producer found the debt set is seen.
            Interlocked.Exchange(ref _wakeupOwed, 0);
        }
    }

    // One per dispatcher, queued again for each debt (two may be queued at once; either pays).
    private sealed class PayOwedWakeupItem(ProactorDispatcher dispatcher) : IThreadPoolWorkItem
    {
        public void Execute()
        {
            Interlocked.Decrement(ref s_owedWakeupsQueued);
            dispatcher.PayOwedWakeup();
        }
    }

    private sealed class CoalescingScheduler(ProactorDispatcher dispatcher) : PipeScheduler
    {
        public override void Schedule(Action<object?> action, object? state) => dispatcher.ScheduleItem(action, state, mayOweWakeup: true);
    }
}
