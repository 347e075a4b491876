using System.Collections.Concurrent;
using System.Diagnostics;
using KestrelProactor.Internal;
using Microsoft.AspNetCore.Connections;

namespace KestrelProactor.Dispatching;

/// <summary>
/// How a dispatcher ends, and what it releases then.
/// <para>
/// The loop ends in one of three ways: a stop finds every owner gone; a stop's deadline passes with owners still
/// in the table; or the loop throws (a ring error: the dispatcher has failed). In each case the dispatcher thread
/// then, in this order: closes its kernel queue (<see cref="Teardown"/>), releases every owner still in the table,
/// then publishes the end, from which point a <see cref="Schedule"/> from any thread releases the owner of its
/// work item itself instead of queueing it. Nothing is released before the kernel queue is closed: an owner
/// released earlier would close its descriptor and give its pipe memory back while an operation in the queue may
/// still write into that memory.
/// </para>
/// <para>
/// Closing the queue is not always the end of the kernel's access. An owner whose operations are still counted in
/// flight is released with <c>operationsMayBeLive</c> unless the backend says teardown ends every access
/// (<see cref="TeardownEndsKernelAccess"/>); it then keeps what those operations point at out of the pool for good
/// (<see cref="KeepForKernel"/>, logged) rather than free memory the kernel may still write.
/// </para>
/// <para>
/// The memory pool is given back once nothing here can use it: after the dispatcher has ended and every connection
/// made on it has been disposed (each holds a lease, see <see cref="TryAcquirePoolLease"/>). It is disposed when no
/// other dispatcher of the backend holds it either (<see cref="ProactorMemoryPools"/>).
/// </para>
/// </summary>
internal abstract partial class ProactorDispatcher
{
    /// <summary>How long a stop waits for the owners to close before it releases those that are left.</summary>
    public static readonly TimeSpan StopTimeout = TimeSpan.FromSeconds(5);

    /// <summary>How long the end of a healthy loop waits for the kernel to answer what it cancelled (<see cref="QuiesceKernel"/>).</summary>
    public static readonly TimeSpan QuiesceTimeout = TimeSpan.FromSeconds(1);

    /// <summary>Memory the kernel may still use after its dispatcher ended: rooted for the life of the process.</summary>
    private static readonly ConcurrentQueue<object> s_keptForKernel = new();

    /// <summary>One for the dispatcher until it has ended, one per connection until it is disposed.</summary>
    private int _poolLeases = 1;
    private int _ownLeaseReleased;
    private volatile Exception? _failure;
    private volatile bool _ended;
    private volatile Exception? _endedWith;

    /// <summary>True once the loop has stopped on an unrecoverable error (its owners are released by the time <see cref="Ended"/> completes).</summary>
    public bool HasFailed => _failure is not null;

    /// <summary>
    /// True once the loop is over and its kernel queue closed (stopped or failed): nothing runs here any more. The
    /// owners left in the table are released after this turns true; <see cref="Ended"/> completes once they are.
    /// </summary>
    public bool HasEnded => _ended;

    /// <summary>
    /// Completes once the loop has ended (stopped or failed) and every owner it still held was released, with what
    /// the kernel may still touch kept (<see cref="KeepForKernel"/>). Never faults.
    /// </summary>
    internal Task Ended => _stopped.Task;

    /// <summary>
    /// True once the loop has ended and its kernel queue was closed. False after an end whose teardown failed: the
    /// queue may still hold operations (an armed accept), so nothing of it may be taken over elsewhere.
    /// </summary>
    public bool QueueClosed { get; private set; }

    /// <summary>True once a stop was asked for.</summary>
    internal bool StopRequested => _stopRequested;

    /// <summary>When the stop was asked for (<see cref="Stopwatch"/> ticks; for tests).</summary>
    internal long StopRequestedTimestamp { get; private set; }

    /// <summary>When the loop ended (<see cref="Stopwatch"/> ticks; for tests).</summary>
    internal long EndedTimestamp { get; private set; }

    /// <summary>True once this dispatcher has given back its hold on its pool (disposed unless another dispatcher holds it).</summary>
    internal bool PoolReleased => Volatile.Read(ref _poolLeases) == 0;

    /// <summary>Objects kept alive because the kernel may still use their memory (for tests).</summary>
    internal static int KeptForKernelCount => s_keptForKernel.Count;

    /// <summary>
    /// A test hook: runs on the dispatcher thread once its loop has ended (stopped or failed), before its kernel
    /// queue is closed. A throw takes the path of a failed teardown.
    /// </summary>
    internal static Action<ProactorDispatcher>? TestTeardownHook { get; set; }

    /// <summary>
    /// Whether the kernel may use memory of <paramref name="owner"/> whatever closing the queue does (a zero-copy
    /// send whose pages still sit in the socket's queue until its notification). Such an owner is always released
    /// as maybe-live.
    /// </summary>
    protected virtual bool HoldsMemoryBeyondQueue(IOperationOwner owner) => false;

    /// <summary>
    /// Dispatcher thread, after a loop that ended without failing (a stop, or a stop's deadline), before
    /// <see cref="Teardown"/>: submits what is queued, cancels what is in flight and runs the completions that follow,
    /// for at most <see cref="QuiesceTimeout"/>.
    /// </summary>
    protected virtual void QuiesceKernel()
    {
    }

    /// <summary>
    /// Dispatcher thread, after the loop failed, before <see cref="Teardown"/>: without using the kernel queue again,
    /// closes the descriptors it would have closed (queued closes, completed accepts nobody read).
    /// </summary>
    protected virtual void SalvageAfterFailure()
    {
    }

    /// <summary>
    /// Whether closing the kernel queue (<see cref="Teardown"/>) ends every access of the kernel to the memory of
    /// operations still in flight. When false, the memory of an owner whose operations had not completed is kept
    /// out of the pool for good instead of freed.
    /// </summary>
    protected virtual bool TeardownEndsKernelAccess => false;

    /// <summary>
    /// Asks the loop to end once its owners are gone (or after <see cref="StopTimeout"/>), and waits until it has
    /// ended and released what was left.
    /// </summary>
    public async Task StopAsync()
    {
        if (_thread is null)
        {
            ReleaseOwnLease();
            return;
        }

        if (!_stopRequested)
        {
            StopRequestedTimestamp = Stopwatch.GetTimestamp();
            _stopRequested = true;
        }

        Wake();
        await _stopped.Task.ConfigureAwait(false);
    }

    /// <summary>Gives back the pool holds of dispatchers built but never started (a backend whose start failed).</summary>
    internal static void ReleaseUnstarted(ReadOnlySpan<ProactorDispatcher> dispatchers)
    {
        foreach (ProactorDispatcher dispatcher in dispatchers)
        {
            if (dispatcher._thread is null)
            {
                dispatcher.ReleaseOwnLease();
            }
        }
    }

    private void ThreadMain()
    {
        try
        {
            Initialize();
            // Known once the backend is set up: whether its waits can be shorter than a millisecond.
            TimeSpan delay = Options.OutputCoalescingDelay;
            _outputCoalescingTicks = SupportsShortWaits && delay > TimeSpan.Zero
                ? Math.Max(1, (long)(delay.TotalSeconds * Stopwatch.Frequency))
                : 0;
            TimeSpan spin = Options.HandOffSpinTime;
            _handOffSpinTicks = SpinsAfterHandOff && !Options.UnsafePreferInlineScheduling && spin > TimeSpan.Zero
                ? Math.Max(1, spin.Ticks * Stopwatch.Frequency / TimeSpan.TicksPerSecond)
                : 0;
        }
        catch (Exception ex)
        {
            // Nothing was registered; the backend released what it had set up.
            _ended = true;
            _endedWith = ex;
            _started.TrySetException(ex);
            ReleaseOwnLease();
            _stopped.TrySetResult();
            return;
        }

        _started.TrySetResult();
        Exception? failure = null;
        try
        {
            RunLoop();
        }
        catch (Exception ex)
        {
            ProactorLog.DispatcherFailed(Logger, Id, ex);
            failure = ex;
        }

        End(failure);
    }

    /// <summary>Dispatcher thread, once the loop is over: close the kernel queue, then release what is left (see the type's notes).</summary>
    private void End(Exception? failure)
    {
        Exception reason = failure ?? new ConnectionAbortedException("The transport stopped before this connection closed.");
        try
        {
            if (failure is null)
            {
                // A healthy queue: what was queued goes out and what is in flight is cancelled and waited for, so
                // queued closes happen and what is still counted below is truly maybe-live.
                QuiesceKernel();
            }
            else
            {
                // A failed queue is not used again: what it would have closed is closed without it.
                SalvageAfterFailure();
            }
        }
        catch (Exception ex)
        {
            ProactorLog.WorkItemFault(Logger, Id, ex);
        }

        bool tornDown = false;
        try
        {
            TestTeardownHook?.Invoke(this);
            Teardown();
            tornDown = true;
        }
        catch (Exception ex)
        {
            // The queue may still be open: every operation still counted in flight keeps its memory.
            ProactorLog.WorkItemFault(Logger, Id, ex);
        }

        QueueClosed = tornDown;
        _ended = true;
        EndedTimestamp = Stopwatch.GetTimestamp();
        if (failure is not null)
        {
            _failure = failure;
            Context.Metrics.CountDispatcherFailure();
        }

        // Before the end is published: until then no other thread releases an owner of this dispatcher, so each
        // owner in the table is released here, with what its operations may still hold.
        // A queue whose teardown failed may still run anything: every owner is treated as maybe-live.
        bool kernelDone = tornDown && TeardownEndsKernelAccess;
        var owners = new List<IOperationOwner>();
        Table.CopyOwners(owners);
        foreach (IOperationOwner owner in owners)
        {
            bool mayBeLive = !tornDown || (!kernelDone && Table.InFlightOf(owner) != 0) || HoldsMemoryBeyondQueue(owner);
            ReleaseOwner(owner, reason, operationsMayBeLive: mayBeLive);
        }

        DrainLocalWork(reason);
        _endedWith = reason;
        // Pairs with Schedule's enqueue-then-check: either this drain sees an item or its producer sees the end.
        Interlocked.MemoryBarrier();
        DrainLocalWork(reason);
        DrainAfterEnd();
        ReleaseOwnLease();
        _stopped.TrySetResult();
    }

    /// <summary>Work queued on this thread that never ran: the owners it was for (a connection about to start) are released.</summary>
    private void DrainLocalWork(Exception reason)
    {
        while (_localWork.TryDequeue(out var item))
        {
            if (item.State is IOperationOwner owner)
            {
                ReleaseOwner(owner, reason, operationsMayBeLive: false);
            }
        }
    }

    /// <summary>Any thread, after the end: work that can no longer run releases the owner it was for.</summary>
    private void DrainAfterEnd()
    {
        while (_remoteWork.TryDequeue(out var item))
        {
            if (item.State is IOperationOwner owner)
            {
                // An owner with operations was in the table and has been released already (releases are idempotent):
                // one only queued here has nothing in flight.
                ReleaseOwner(owner, _endedWith!, operationsMayBeLive: false);
            }
        }
    }

    private void ReleaseOwner(IOperationOwner owner, Exception reason, bool operationsMayBeLive)
    {
        try
        {
            owner.OnDispatcherFailed(reason, operationsMayBeLive);
        }
        catch (Exception ex)
        {
            ProactorLog.WorkItemFault(Logger, Id, ex);
        }
    }

    /// <summary>
    /// Keeps <paramref name="holder"/> (and the memory it holds) alive for the life of the process: the kernel may
    /// still write into that memory after this dispatcher ended, so it must never go back to a pool or the GC.
    /// </summary>
    public void KeepForKernel(object holder, string ownerName)
    {
        s_keptForKernel.Enqueue(holder);
        ProactorLog.MemoryKeptForKernel(Logger, Id, ownerName);
    }

    /// <summary>
    /// Takes a lease on <see cref="MemoryPool"/> for a connection, released by <see cref="ReleasePoolLease"/> once its
    /// pipes are done. False when the pool is already released (a connection made after this dispatcher ended).
    /// </summary>
    public bool TryAcquirePoolLease()
    {
        int leases = Volatile.Read(ref _poolLeases);
        while (leases != 0)
        {
            int seen = Interlocked.CompareExchange(ref _poolLeases, leases + 1, leases);
            if (seen == leases)
            {
                return true;
            }

            leases = seen;
        }

        return false;
    }

    /// <summary>
    /// Gives back a lease; the last one gives this dispatcher's hold on the pool back to the backend, which disposes
    /// the pool once no dispatcher holds it (see <see cref="ProactorMemoryPools"/>).
    /// </summary>
    public void ReleasePoolLease()
    {
        if (Interlocked.Decrement(ref _poolLeases) == 0)
        {
            Context.MemoryPools.Release(MemoryPool, Logger, Id);
        }
    }

    private void ReleaseOwnLease()
    {
        if (Interlocked.Exchange(ref _ownLeaseReleased, 1) == 0)
        {
            ReleasePoolLease();
        }
    }
}
