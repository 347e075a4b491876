using System.Buffers;
using System.Collections.Concurrent;
using System.Diagnostics;
using System.IO.Pipelines;
using System.Net;
using System.Runtime.InteropServices;
using KestrelProactor.Internal;
using Microsoft.Extensions.Logging;

namespace KestrelProactor.Dispatching;

/// <summary>
/// The proactor's dispatcher: one dedicated thread that owns one kernel queue (an io_uring ring or a completion
/// port). Only this thread submits operations and runs their completion handlers, so the state it touches
/// (the <see cref="OperationTable"/>, connection state machines, buffer rings) needs no locks.
/// <para>
/// Other threads reach it only through <see cref="Schedule"/>: the work item is queued and the dispatcher is
/// woken only if it sleeps in the kernel, so a busy dispatcher costs its producers no system call. The
/// dispatcher is also the <see cref="PipeScheduler"/> of the pipe ends the transport drives, so an application
/// flush on a pool thread becomes a work item here, and the send it triggers is batched with everything else
/// submitted in the same pass.
/// </para>
/// <para>
/// A completion handler that throws is logged, its owner is told to end itself (a connection aborts), and the
/// loop goes on: one bad connection never takes its dispatcher down.
/// </para>
/// </summary>
internal abstract partial class ProactorDispatcher : PipeScheduler
{
    private readonly ConcurrentQueue<(Action<object?> Action, object? State)> _remoteWork = new();
    private readonly Queue<(Action<object?> Action, object? State)> _localWork = new();
    private readonly TaskCompletionSource _started = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly TaskCompletionSource _stopped = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private Thread? _thread;
    private int _sleeping;
    private long _openConnections;
    private volatile bool _stopRequested;
    private readonly Queue<(ProactorConnection Connection, int Deferral, long Due)> _deferredOutputReads = new();
    private long _outputCoalescingTicks;

    protected ProactorDispatcher(int id, ProactorBackendContext context)
    {
        Id = id;
        Context = context;
        Logger = context.Logger;
        Options = context.Options;
        // Counted by instance across the backend's dispatchers: a factory may hand every dispatcher the same pool.
        MemoryPool = context.MemoryPools.Acquire();
        Table = new OperationTable();
    }

    public int Id { get; }

    public abstract string BackendName { get; }

    public ProactorBackendContext Context { get; }

    public ProactorTransportOptions Options { get; }

    public ILogger Logger { get; }

    public MemoryPool<byte> MemoryPool { get; }

    /// <summary>
    /// The pool of the connections' output pipes: <see cref="MemoryPool"/>, unless the backend must keep blocks a
    /// send still needs after the pipe is done with them (io_uring's zero-copy sends).
    /// </summary>
    public virtual MemoryPool<byte> OutputMemoryPool => MemoryPool;

    protected OperationTable Table { get; }

    /// <summary>True on this dispatcher's own thread.</summary>
    public bool IsOnDispatcherThread => Thread.CurrentThread == _thread;

    /// <summary>Operations in flight (read racily by metrics and tests).</summary>
    public long InFlightOperations => Table.InFlight;

    /// <summary>Owners (connections and listeners) in the operation table (read racily).</summary>
    public long ConnectionCount => Table.Count;

    /// <summary>Work queued from other threads and not yet run, and whether the loop counts itself asleep (diagnostics).</summary>
    internal string DescribeWakeState() => $"remoteWork={_remoteWork.Count} sleeping={Volatile.Read(ref _sleeping)} deferredOutputReads={_deferredOutputReads.Count}";

    /// <summary>The owners in the table, for a test's failure message (read racily from another thread).</summary>
    internal List<IOperationOwner> OwnersForTests()
    {
        var owners = new List<IOperationOwner>();
        Table.CopyOwners(owners);
        return owners;
    }

    /// <summary>Connections registered here and not yet finished, listeners left out (read racily, by the meter).</summary>
    public long OpenConnections => Volatile.Read(ref _openConnections);

    /// <summary>Receive buffers handed out and not yet back (read racily).</summary>
    public virtual long ReceiveBuffersLent => 0;

    /// <summary>The buffers this backend lends to connections' input pipes, or null when receives are copied.</summary>
    public virtual IReceiveBufferLender? ReceiveBufferLender => null;

    /// <summary>How many buffers the lender has in all (caps what one connection may hold).</summary>
    public virtual int LendableBufferCount => 0;

    /// <summary>Completion handlers that threw since start.</summary>
    public long HandlerFaults { get; private set; }

    /// <summary>Sends handed to the kernel, resubmissions of a short send included (for tests).</summary>
    public long SendsStarted { get; private set; }

    /// <summary>Output reads held back by <see cref="DeferOutputRead"/> (for tests).</summary>
    public long OutputReadsDeferred { get; private set; }

    /// <summary>
    /// A test hook: runs at the start of every receive completion handler with the received bytes. A throw
    /// from it takes the same path as a bug in a handler.
    /// </summary>
    internal static ReceiveHook? TestReceiveHook { get; set; }

    internal delegate void ReceiveHook(ReadOnlySpan<byte> data);

    /// <summary>
    /// A test hook: runs at the start of every completion's handler (before the owner sees it) and of every
    /// output continuation, with the owner and the operation. A throw takes the same path as a bug there.
    /// </summary>
    internal static Action<IOperationOwner, OperationKind>? TestHandlerHook { get; set; }

    /// <summary>A test hook: runs at the top of every pass of the loop; a throw takes the path of a ring failure.</summary>
    internal static Action<ProactorDispatcher>? TestLoopHook { get; set; }

    /// <summary>Starts the thread and waits until the backend is set up on it (rings must be created by their only submitter).</summary>
    public Task StartAsync()
    {
        _thread = new Thread(ThreadMain)
        {
            IsBackground = true,
            Name = $"Proactor Dispatcher #{Id}",
        };
        _thread.Start();
        return _started.Task;
    }

    /// <inheritdoc />
    public override void Schedule(Action<object?> action, object? state) => ScheduleItem(action, state, mayOweWakeup: false);

    /// <summary>
    /// As <see cref="Schedule(Action{object?}, object?)"/>; with <paramref name="mayOweWakeup"/>, a pool thread that
    /// finds this dispatcher asleep while the pool has other work queued may leave the wake-up to a pool work item
    /// queued behind that work (see <see cref="OweWakeup"/>).
    /// </summary>
    private void ScheduleItem(Action<object?> action, object? state, bool mayOweWakeup)
    {
        if (IsOnDispatcherThread && _endedWith is null)
        {
            // Runs before the dispatcher next sleeps: no wake-up needed.
            _localWork.Enqueue((action, state));
            return;
        }

        _remoteWork.Enqueue((action, state));
        if (_endedWith is not null)
        {
            // Nothing runs here any more. Pairs with End's publish-then-drain: either it saw this item or this
            // thread sees the end and releases the item's owner itself.
            DrainAfterEnd();
            return;
        }

        // Pairs with the store-then-check in TryPrepareToSleep: either the dispatcher sees this item before it
        // sleeps, or it already published _sleeping = 1 and this thread wakes it.
        if (Volatile.Read(ref _sleeping) != 1)
        {
            return;
        }

        if (mayOweWakeup && ShouldOweWakeup())
        {
            OweWakeup();
            return;
        }

        WakeIfSleeping();
    }

    private void RunLoop()
    {
        long stopDeadline = 0;
        while (true)
        {
            TestLoopHook?.Invoke(this);
            // Awake, and about to look at the queue: a wake-up owed to this dispatcher is no longer needed.
            ClearOwedWakeup();
            RunWorkItems();
            RunDueOutputReads();
            if (_stopRequested)
            {
                if (stopDeadline == 0)
                {
                    stopDeadline = Environment.TickCount64 + (long)StopTimeout.TotalMilliseconds;
                    AbortAllOwners();
                    continue;
                }

                if (Table.Count == 0)
                {
                    return;
                }

                if (Environment.TickCount64 > stopDeadline)
                {
                    // What is left is released once the kernel queue is gone (see End).
                    ProactorLog.DispatcherStopTimedOut(Logger, Id, Table.Count, (int)StopTimeout.TotalSeconds);
                    return;
                }
            }

            SpinAfterHandOff();
            bool sleep = TryPrepareToSleep();
            // While stopping, poll instead of sleeping so the deadline above is honoured. A deferred output read
            // bounds the sleep.
            long waitNanoseconds = -1;
            if (_deferredOutputReads.Count != 0)
            {
                long ticks = Math.Max(0, _deferredOutputReads.Peek().Due - Stopwatch.GetTimestamp());
                waitNanoseconds = (long)(ticks * (1_000_000_000.0 / Stopwatch.Frequency));
            }

            PollCompletions(wait: sleep && !_stopRequested, waitNanoseconds);
            Volatile.Write(ref _sleeping, 0);
            if (sleep && _stopRequested)
            {
                Thread.Sleep(1);
            }
        }
    }

    /// <summary>Runs queued work until none is left; items queued meanwhile by this thread run in the same pass.</summary>
    protected void RunWorkItems()
    {
        while (true)
        {
            if (_localWork.TryDequeue(out var item) || _remoteWork.TryDequeue(out item))
            {
                try
                {
                    item.Action(item.State);
                }
                catch (Exception ex)
                {
                    if (item.State is IOperationOwner owner)
                    {
                        // A step of one connection or listener (its start, an abort): that owner pays, as for a
                        // completion handler. Other items (a pipe's own callbacks) can only be logged.
                        OnHandlerFault(owner, OperationKind.Work, operationEnded: false, ex);
                    }
                    else
                    {
                        ProactorLog.WorkItemFault(Logger, Id, ex);
                    }
                }

                continue;
            }

            return;
        }
    }

    /// <summary>
    /// Whether this dispatcher can hold back a streaming connection's next output read for
    /// <see cref="ProactorTransportOptions.OutputCoalescingDelay"/> (see <see cref="DeferOutputRead"/>): the option
    /// is on, the backend has short waits, and the dispatcher is not stopping.
    /// </summary>
    public bool DefersOutputReads => _outputCoalescingTicks != 0 && !_stopRequested;

    /// <summary>
    /// Calls <see cref="ProactorConnection.ResumeDeferredOutputRead"/> once the delay is over, so the flushes the
    /// application makes meanwhile go out in one send instead of waking this thread one by one. Only when
    /// <see cref="DefersOutputReads"/>.
    /// </summary>
    public void DeferOutputRead(ProactorConnection connection, int deferral)
    {
        OutputReadsDeferred++;
        _deferredOutputReads.Enqueue((connection, deferral, Stopwatch.GetTimestamp() + _outputCoalescingTicks));
    }

    /// <summary>Runs the deferred output reads whose delay is over (one delay for all, so the queue is in due order).</summary>
    private void RunDueOutputReads()
    {
        if (_deferredOutputReads.Count == 0)
        {
            return;
        }

        long now = Stopwatch.GetTimestamp();
        while (_deferredOutputReads.TryPeek(out var entry) && (entry.Due <= now || _stopRequested))
        {
            _deferredOutputReads.Dequeue();
            // Its own faults are the connection's, as with the output continuation.
            entry.Connection.ResumeDeferredOutputRead(entry.Deferral);
        }
    }

    /// <summary>True when nothing is queued: the dispatcher may block in the kernel until a completion or a wake-up.</summary>
    private bool TryPrepareToSleep()
    {
        if (_localWork.Count != 0 || !_remoteWork.IsEmpty)
        {
            return false;
        }

        Volatile.Write(ref _sleeping, 1);
        Interlocked.MemoryBarrier();
        if (!_remoteWork.IsEmpty)
        {
            // A producer may have missed the flag; either it resets it (and wakes us, harmlessly) or we do.
            Interlocked.Exchange(ref _sleeping, 0);
            return false;
        }

        return true;
    }

    private void AbortAllOwners()
    {
        var owners = new List<IOperationOwner>();
        Table.CopyOwners(owners);
        foreach (IOperationOwner owner in owners)
        {
            if (owner is ProactorConnection connection)
            {
                connection.Abort(new Microsoft.AspNetCore.Connections.ConnectionAbortedException("The transport is stopping."));
            }
        }
    }

    /// <summary>
    /// Routes one completion to its owner's handler, the same way for every backend. A handler that throws
    /// aborts its owner (see <see cref="OnHandlerFault"/>); either way a closing connection or an unbinding
    /// listener then moves on.
    /// </summary>
    /// <param name="owner">The owner found in the operation table.</param>
    /// <param name="kind">The operation that completed.</param>
    /// <param name="result">Bytes or descriptor, or the error.</param>
    /// <param name="more">A multishot operation stays armed.</param>
    /// <param name="receivedData">For a receive into a backend buffer: the bytes (copied before this returns).</param>
    /// <param name="acceptedSocket">For an accept: the new socket; the listener takes it (and clears this) or closes it.</param>
    /// <param name="lentBufferId">For a receive into a lendable backend buffer: its id, else -1.</param>
    /// <returns>True when the connection took the lent buffer (the backend must not reuse it until it comes back).</returns>
    protected bool DispatchCompletion(IOperationOwner owner, OperationKind kind, IoResult result, bool more, ReadOnlySpan<byte> receivedData, SafeHandle? acceptedSocket, int lentBufferId = -1)
    {
        var connection = owner as ProactorConnection;
        bool bufferTaken = false;
        try
        {
            TestHandlerHook?.Invoke(owner, kind);
            switch (kind)
            {
                case OperationKind.Accept:
                    ((ProactorConnectionListener)owner).OnAcceptCompleted(result, ref acceptedSocket, more);
                    break;
                case OperationKind.Receive:
                    bufferTaken = connection!.OnReceiveCompleted(result, receivedData, more, lentBufferId);
                    break;
                case OperationKind.Send:
                    connection!.OnSendCompleted(result);
                    break;
                case OperationKind.Shutdown:
                    connection!.OnShutdownCompleted(result);
                    break;
                case OperationKind.Close:
                    connection!.OnCloseCompleted(result);
                    break;
                case OperationKind.Cancel:
                    // A connection moves its close on below, a listener its unbind.
                    break;
            }
        }
        catch (Exception ex)
        {
            // Counted and logged first, so the fault is on record by the time its client sees the close. An accepted
            // socket the listener had not yet handed to a connection is closed here, not leaked.
            OnHandlerFault(owner, kind, operationEnded: !more, ex);
            acceptedSocket?.Dispose();
        }

        if (connection is not null)
        {
            connection.AdvanceClose();
        }
        else
        {
            // Outside the catch, as for a connection's close: an unbind waiting for this completion moves on
            // even when the handler and the listener's own fault handling both threw.
            (owner as ProactorConnectionListener)?.AdvanceUnbind();
        }

        return bufferTaken;
    }

    /// <summary>
    /// Runs after a completion handler, or a continuation run on the dispatcher for an owner, threw; the owner
    /// is aborted instead of the dispatcher. Dispatcher thread only.
    /// </summary>
    public void OnHandlerFault(IOperationOwner owner, OperationKind kind, bool operationEnded, Exception exception)
    {
        HandlerFaults++;
        Context.Metrics.HandlerFaults.Add(1);
        ProactorLog.CompletionHandlerFault(Logger, Id, kind.ToString(), owner.DisplayName, exception);
        try
        {
            owner.OnHandlerFault(kind, operationEnded, exception);
        }
        catch (Exception second)
        {
            ProactorLog.WorkItemFault(Logger, Id, second);
            if (owner is ProactorConnection connection)
            {
                // Its own fault handling threw: abort it all the same, or it stays open with nothing to end it.
                // Abort is idempotent and schedules before it logs, so a second call is harmless.
                try
                {
                    connection.Abort(new Microsoft.AspNetCore.Connections.ConnectionAbortedException(
                        $"The transport failed while handling {kind} for this connection.", exception));
                }
                catch (Exception third)
                {
                    ProactorLog.WorkItemFault(Logger, Id, third);
                }
            }
        }
    }

    // ---- What the backend provides ----

    /// <summary>Creates the kernel queue; runs on the dispatcher thread.</summary>
    protected abstract void Initialize();

    /// <summary>
    /// Submits what is queued, optionally blocks until a completion or wake-up (for at most
    /// <paramref name="waitNanoseconds"/> when that is not negative), then runs completion handlers.
    /// </summary>
    protected abstract void PollCompletions(bool wait, long waitNanoseconds);

    /// <summary>Whether <see cref="PollCompletions"/> honours a wait shorter than a millisecond.</summary>
    protected virtual bool SupportsShortWaits => false;

    /// <summary>Interrupts a blocking <see cref="PollCompletions"/> from another thread.</summary>
    protected abstract void Wake();

    /// <summary>Releases the kernel queue; runs on the dispatcher thread after the loop ends.</summary>
    protected abstract void Teardown();

    public void Register(IOperationOwner owner)
    {
        Table.Register(owner);
        if (owner is ProactorConnection)
        {
            Interlocked.Increment(ref _openConnections);
        }
    }

    public void Unregister(IOperationOwner owner)
    {
        Table.Unregister(owner);
        if (owner is ProactorConnection)
        {
            Interlocked.Decrement(ref _openConnections);
        }
    }

    public int InFlightOf(IOperationOwner owner) => Table.InFlightOf(owner);

    public abstract void SubmitReceive(ProactorConnection connection);

    /// <summary>Starts a send of <paramref name="buffer"/> (its memory stays pinned until the completion).</summary>
    public void StartSend(ProactorConnection connection, in ReadOnlySequence<byte> buffer)
    {
        SubmitSend(connection, buffer);
        SendsStarted++;
    }

    protected abstract void SubmitSend(ProactorConnection connection, in ReadOnlySequence<byte> buffer);

    public abstract void SubmitShutdownWrite(ProactorConnection connection);

    /// <summary>Cancels the owner's in-flight operation of <paramref name="kind"/>; its completion still arrives (ECANCELED or done).</summary>
    public abstract void SubmitCancel(IOperationOwner owner, OperationKind kind);

    public abstract void SubmitAccept(ProactorConnectionListener listener);

    /// <summary>
    /// Whether a listen socket that accepted on another dispatcher, now ended, can accept here. A completion port
    /// cannot take a socket already bound to another port.
    /// </summary>
    public virtual bool CanTakeOverListener => true;

    /// <summary>Sets up a freshly accepted socket for this dispatcher (TCP_NODELAY and what the backend needs).</summary>
    public abstract void ConfigureAcceptedSocket(SafeHandle socket, bool noDelay);

    public abstract void SubmitClose(ProactorConnection connection);

    /// <summary>Makes the coming close send RST instead of FIN (SO_LINGER with a zero time-out).</summary>
    public abstract void SetAbortiveClose(ProactorConnection connection);

    /// <summary>
    /// Looks up a socket's local or peer address. False when the socket has none (a peer that already reset);
    /// true with a null endpoint for an unnamed Unix socket.
    /// </summary>
    public abstract bool TryGetEndPoint(SafeHandle socket, bool local, out EndPoint? endPoint);

    /// <summary>Why the loop stopped, once <see cref="HasFailed"/>; null while it runs (for the health check).</summary>
    public Exception? LoopFailure => _failure;
}
