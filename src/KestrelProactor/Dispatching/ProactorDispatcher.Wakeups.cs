using System.Diagnostics;
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
    private long _handOffSpinTicks;
    private int _readersWoken;
    private long _handOffSpinTicksForTests;
    private static int s_spinningDispatchers;
    private static readonly int s_maxSpinningDispatchers = Environment.ProcessorCount - 1;
    private static readonly long s_busySpinTicks = Stopwatch.Frequency / 20_000; // 50 µs
    private int _handOffSpinBackoff;
    private int _handOffSpinsToSkip;
    private const int MaxHandOffSpinBackoff = 63;

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

    /// <summary>Spins after a hand-off to the pool (see <see cref="SpinAfterHandOff"/>); dispatcher thread, read racily by tests.</summary>
    public long HandOffSpins { get; private set; }

    /// <summary>Spins that ended with work queued (a flush, usually the response), so no wake-up was needed.</summary>
    public long HandOffSpinsCaught { get; private set; }

    /// <summary>Chances to spin passed over because recent spins ended without the response (backing off).</summary>
    public long HandOffSpinsSkipped { get; private set; }

    /// <summary>Chances to spin declined because kernel work was waiting for the next enter.</summary>
    public long HandOffSpinsDeclinedForKernelWork { get; private set; }

    /// <summary>Chances to spin refused because as many dispatchers as cores but one were spinning.</summary>
    public long HandOffSpinsRefusedByCap { get; private set; }

    /// <summary>Tests only: replaces the spin time (ticks) from the options (which allow at most a millisecond) where it is on; 0: no override.</summary>
    internal long HandOffSpinTicksForTests
    {
        get => Volatile.Read(ref _handOffSpinTicksForTests);
        set => Volatile.Write(ref _handOffSpinTicksForTests, value);
    }

    /// <summary>Tests only: the spin time the options gave this dispatcher, in ticks (0: it never spins).</summary>
    internal long HandOffSpinTicks => _handOffSpinTicks;

    /// <summary>
    /// Whether the backend holds kernel work that only its next enter sends or posts (prepared submissions,
    /// completions ready or held back, task work to run, a starved receive waiting for a buffer); a spin would delay it.
    /// </summary>
    protected virtual bool HasKernelWorkPending => false;

    /// <summary>Whether this backend spins for the response after a hand-off to the pool (see <see cref="SpinAfterHandOff"/>).</summary>
    protected virtual bool SpinsAfterHandOff => false;

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
        => Thread.CurrentThread.IsThreadPoolThread && PoolHasOtherWork(ownItems: 0);

    /// <summary>
    /// Whether the thread pool has work queued beyond <paramref name="ownItems"/> items of the caller's and the owed
    /// wake-ups (which are not work): read racily, as a hint.
    /// </summary>
    private bool PoolHasOtherWork(int ownItems)
        => TestPoolHasQueuedWork?.Invoke(this)
           ?? System.Threading.ThreadPool.PendingWorkItemCount > ownItems + Volatile.Read(ref s_owedWakeupsQueued);

    /// <summary>
    /// Dispatcher thread (or any thread once the loop is over, when nothing reads the count): an input append completed
    /// a pending read whose continuation went to the pool.
    /// </summary>
    internal void NoteReaderWoken() => _readersWoken++;

    /// <summary>
    /// Before the dispatcher sleeps (see <see cref="ProactorTransportOptions.HandOffSpinTime"/>): after a pass that
    /// handed exactly one request to the pool, and with nothing else queued there, polls the work queue for the
    /// response's flush for up to the spin time. The loop stays counted as awake meanwhile, so that flush queues its
    /// output read without a wake-up, and the next pass sends it. It does not start while kernel work waits for the next
    /// enter, and ends when some arrives (<see cref="HasKernelWorkPending"/>), at a stop, or at a deferred output read's
    /// due time. A whole spin that ends without the response makes the next ones back off.
    /// </summary>
    private void SpinAfterHandOff()
    {
        int woken = _readersWoken;
        if (woken == 0)
        {
            return;
        }

        _readersWoken = 0;
        long overrideTicks = Volatile.Read(ref _handOffSpinTicksForTests);
        long ticks = _handOffSpinTicks == 0 ? 0 : overrideTicks != 0 ? overrideTicks : _handOffSpinTicks;
        if (ticks == 0 || woken != 1 || _stopRequested || _localWork.Count != 0 || !_remoteWork.IsEmpty || PoolHasOtherWork(ownItems: 1))
        {
            return;
        }

        if (HasKernelWorkPending)
        {
            // Kernel work prepared in this pass (a re-armed receive, the rest of a short send, a starved receive's
            // retry) goes out with the next enter, which a spin would hold back.
            HandOffSpinsDeclinedForKernelWork++;
            return;
        }

        if (_handOffSpinsToSkip != 0)
        {
            _handOffSpinsToSkip--;
            HandOffSpinsSkipped++;
            return;
        }

        // As many dispatchers spinning as cores but one: the threads that would answer need the rest. (A test that
        // stretches this dispatcher's spin owns it, and is not refused because another test's dispatcher spins.)
        bool counted = overrideTicks == 0;
        if (counted && Interlocked.Increment(ref s_spinningDispatchers) > s_maxSpinningDispatchers)
        {
            Interlocked.Decrement(ref s_spinningDispatchers);
            HandOffSpinsRefusedByCap++;
            return;
        }

        HandOffSpins++;
        long start = Stopwatch.GetTimestamp();
        long until = start + ticks;
        if (_deferredOutputReads.Count != 0)
        {
            until = Math.Min(until, _deferredOutputReads.Peek().Due);
        }

        bool interrupted = false;
        try
        {
            long now = start;
            while (_remoteWork.IsEmpty && now < until)
            {
                if (_stopRequested || HasKernelWorkPending)
                {
                    // A stop, or the kernel's own work (completions posted, task work to run): the next pass takes it.
                    interrupted = true;
                    break;
                }

                // Busy for the first spin's worth; past it (only a test's stretched spin), yield now and then to a
                // thread waiting for this core.
                if (now - start < s_busySpinTicks)
                {
                    Thread.SpinWait(8);
                }
                else
                {
                    Thread.Yield();
                }

                now = Stopwatch.GetTimestamp();
            }
        }
        finally
        {
            if (counted)
            {
                Interlocked.Decrement(ref s_spinningDispatchers);
            }
        }

        if (!_remoteWork.IsEmpty)
        {
            HandOffSpinsCaught++;
            _handOffSpinBackoff = 0;
        }
        else if (!interrupted && until == start + ticks)
        {
            // The whole spin without the response (a handler that waits on a back end): skip the next 1, 3, 7 ... up
            // to 63 chances, so such a load pays for one spin in 64 hand-offs at most; a caught one starts over. A
            // spin cut short (a stop, kernel work, a deferred output read due) says nothing either way.
            _handOffSpinBackoff = Math.Min(_handOffSpinBackoff * 2 + 1, MaxHandOffSpinBackoff);
            _handOffSpinsToSkip = _handOffSpinBackoff;
        }
    }

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
