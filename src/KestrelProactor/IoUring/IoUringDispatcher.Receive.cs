using System.Collections.Concurrent;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using KestrelProactor.Dispatching;
using KestrelProactor.Internal;
using static KestrelProactor.Interop.Linux.Interop;
using static KestrelProactor.Interop.Linux.Interop.IoUring;

namespace KestrelProactor.IoUring;

/// <summary>
/// Receiving: into the buffer ring, whose buffers are lent to the input pipes (ring tier), or into pipe memory
/// taken only once data is there (basic tier). Which side owns a ring buffer at any moment is exact: the kernel
/// until a completion names it, then this dispatcher, then the input pipe from the moment the pipe takes its
/// memory (<see cref="IReceiveBufferLender.GetMemory"/>), until the pipe returns it.
/// </summary>
internal sealed unsafe partial class IoUringDispatcher : IReceiveBufferLender
{
    // Receives waiting for a buffer, in the order they are served (by their turn, see QueueForBuffer), and the
    // list RetryStarvedReceives works through while handlers may queue receives again.
    private List<ProactorConnection> _receiveRetries = new();
    private List<ProactorConnection> _retrying = new();
    private long _lastReceiveTurn;

    // Retried receives whose completion has not come (RetriedForBuffer set): until it has, a fresh receive queues.
    private int _retriesUnanswered;
    private readonly ConcurrentQueue<ushort> _returnedBuffers = new();
    private volatile bool _receivesStarved;
    private int _returnedPending;

    // The buffer whose completion is being handled, and whether the input pipe took it meanwhile.
    private int _deliveringBufferId = -1;
    private bool _deliveredBufferTaken;

    /// <summary>Buffers the application holds: lent, minus those it gave back that wait for the next pass.</summary>
    public override long ReceiveBuffersLent => (_bufferRing?.Lent ?? 0) - Volatile.Read(ref _returnedPending);

    public override IReceiveBufferLender? ReceiveBufferLender => _bufferRing is not null ? this : null;

    public override int LendableBufferCount => _bufferRing?.Count ?? 0;

    /// <summary>The receive side's state, for a test's failure message (read racily from another thread).</summary>
    internal string DescribeReceiveState()
    {
        IoUringRing? ring = _ring;
        return $"dispatcher {Id}: starved={_receivesStarved} retries={_receiveRetries.Count} retried={StarvedReceiveRetries} " +
               $"available={_bufferRing?.Available} lent={_bufferRing?.Lent} returnedPending={Volatile.Read(ref _returnedPending)} " +
               $"owners={ConnectionCount} inFlight={InFlightOperations} sqPending={ring?.PendingSubmissions} sqPublished={ring?.PublishedSubmissions} cqReady={ring?.ReadyCompletions} " +
               $"sqFlags=0x{ring?.SqFlags:x} wakeups={ring?.SubmissionThreadWakeups} {DescribeWakeState()}" +
               (ring is null ? "" : "\n  ring: " + ReadRingInfo(ring)) +
               string.Concat(OwnersForTests().OfType<ProactorConnection>().Select(c => "\n  " + c.DescribeForTests()));
    }

    /// <summary>A one-line sample of the receive side's counters, for a test's periodic log (read racily).</summary>
    internal string SampleReceiveState()
        => $"d{Id} starved={_receivesStarved} retries={_receiveRetries.Count} retried={StarvedReceiveRetries} " +
           $"available={_bufferRing?.Available} lent={_bufferRing?.Lent} returnedPending={Volatile.Read(ref _returnedPending)} owners={ConnectionCount}";

    /// <summary>The kernel's own account of the ring (its fdinfo: heads, tails, armed polls), for a test's failure message.</summary>
    private static string ReadRingInfo(IoUringRing ring)
    {
        try
        {
            return File.ReadAllText($"/proc/self/fdinfo/{ring.RingFd.Fd}").Replace("\n", "\n    ", StringComparison.Ordinal);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            return "unreadable: " + ex.Message;
        }
    }

    /// <summary>Tests only: runs on the dispatcher for each receive completion that brought a ring buffer, before it is handled.</summary>
    internal Action<ProactorConnection>? BufferReceivedForTests { get; set; }

    /// <summary>
    /// Tests only, while the dispatcher is held: the owners whose receive has a final completion (no
    /// <c>IORING_CQE_F_MORE</c>) ready in the CQ, which the kernel posts meanwhile only where its own thread runs the
    /// ring's work (<see cref="KernelCompletesWhileHeldForTests"/>).
    /// </summary>
    internal List<IOperationOwner> OwnersWithFinalReceiveReadyForTests() =>
        Ring.ReadyCompletionsForTests()
            .Where(cqe => OperationToken.KindOf(cqe.user_data) == OperationKind.Receive && (cqe.flags & IORING_CQE_F_MORE) == 0)
            .Select(cqe => Table.Peek(cqe.user_data))
            .OfType<IOperationOwner>()
            .ToList();

    /// <summary>
    /// Tests only: whether the kernel posts completions while the dispatcher thread is held (a polling thread runs the
    /// ring's task work); otherwise they are posted when the dispatcher next enters, all in one batch.
    /// </summary>
    internal bool KernelCompletesWhileHeldForTests => Ring.PollsSubmissions;

    /// <summary>For tests: receives waiting in the queue for a ring buffer (read on the dispatcher thread).</summary>
    internal int QueuedReceivesForTests => _receiveRetries.Count;

    /// <summary>Starved receives retried once a buffer was there for them (counted for tests).</summary>
    public long StarvedReceiveRetries { get; private set; }

    Memory<byte> IReceiveBufferLender.GetMemory(int bufferId)
    {
        if (bufferId == _deliveringBufferId && IsOnDispatcherThread)
        {
            // The pipe takes the buffer: from now on it returns it, whatever the rest of the handler does.
            _deliveredBufferTaken = true;
        }

        return _bufferRing!.GetMemory((ushort)bufferId);
    }

    int IReceiveBufferLender.BufferSize => _bufferRing!.BufferSize;

    /// <summary>Lend no more once three quarters of the ring are out: the kernel must keep buffers to receive into.</summary>
    bool IReceiveBufferLender.ShouldCopy => _bufferRing!.Lent > _bufferRing.Count * 3 / 4;

    void IReceiveBufferLender.Return(int bufferId)
    {
        if (_tornDown)
        {
            // The ring is gone (a failed loop releases its connections after teardown): nothing to re-provide
            // to. The buffer's memory stays mapped, since teardown leaves lent buffers alone.
            return;
        }

        if (IsOnDispatcherThread)
        {
            _bufferRing!.Return((ushort)bufferId);
            return;
        }

        // From an application thread: the dispatcher re-provides it on its next pass. No wake-up is needed
        // unless receives wait for buffers. The increment is a full fence between the enqueue and the read of
        // _receivesStarved; the dispatcher fences between setting it and draining (DrainReturnedBuffers). Without
        // both, each side could read the other's old value: this one no starvation, the dispatcher an empty queue,
        // and the starved receives would sleep until some other event woke the dispatcher.
        _returnedBuffers.Enqueue((ushort)bufferId);
        Interlocked.Increment(ref _returnedPending);
        if (_receivesStarved)
        {
            Schedule(static _ => { }, null);
        }
    }

    private void DrainReturnedBuffers()
    {
        if (_receivesStarved)
        {
            // Pairs with the fence in Return: see there.
            Interlocked.MemoryBarrier();
        }

        while (_returnedBuffers.TryDequeue(out ushort bufferId))
        {
            _bufferRing!.Return(bufferId);
            Interlocked.Decrement(ref _returnedPending);
        }
    }

    public override void SubmitReceive(ProactorConnection connection)
    {
        if (_bufferRing is not null)
        {
            if (_receiveRetries.Count != 0 || _retriesUnanswered != 0)
            {
                // Receives wait for buffers, or were retried and have not completed yet (their -ENOBUFS may be in
                // the completions still to be handled): this one queues behind them instead of going out first and
                // taking the next buffer from them; a connection that re-arms after each receive would otherwise be
                // served until its socket is drained, while the queue waits. It goes out from the queue at the
                // start of the next pass, before the enter it would have gone out with, if a buffer is there for
                // it. Counted in flight, as a starved one.
                QueueForBuffer(connection);
                return;
            }

            SubmitRingReceive(connection);
            return;
        }

        IoUringConnectionState state = StateOf(connection);
        state.PollCancelled = false;
        if (state.ReceiveFilled)
        {
            SubmitReceiveIntoPipe(connection, state);
            return;
        }

        // Basic tier, the socket drained: wait for data before taking any memory, so an idle connection holds
        // none (the socket transport's zero-byte receive). The poll's completion starts the receive itself.
        io_uring_sqe* poll = TakeSqe(connection, OperationKind.Receive);
        poll->opcode = IORING_OP_POLL_ADD;
        poll->fd = FdOf(connection.Socket);
        poll->op_flags = Sys.POLLIN; // errors and hang-ups are always reported
        state.Polling = true;
        Track(poll, connection, OperationKind.Receive);
    }

    /// <summary>Ring tier: a receive whose buffer the kernel picks from the ring once data has arrived.</summary>
    private void SubmitRingReceive(ProactorConnection connection)
    {
        io_uring_sqe* sqe = TakeSqe(connection, OperationKind.Receive);
        sqe->opcode = IORING_OP_RECV;
        sqe->fd = FdOf(connection.Socket);
        // The kernel picks a buffer only when data has arrived (len 0: the buffer's size).
        sqe->flags = IOSQE_BUFFER_SELECT;
        sqe->buf_index = _bufferRing!.GroupId;
        if (_multishotReceive)
        {
            // Stays armed: one completion per arrival, each with a buffer, until cancelled or the peer ends.
            sqe->ioprio = IORING_RECV_MULTISHOT;
        }

        Track(sqe, connection, OperationKind.Receive);
    }

    /// <summary>
    /// Basic tier: a receive straight into pipe memory, of at most half a pool block asked for (a block's unused
    /// tail then serves the next receive), never more than a block: a larger request would make the pipe take an
    /// array from outside the pool.
    /// </summary>
    private void SubmitReceiveIntoPipe(ProactorConnection connection, IoUringConnectionState state)
    {
        io_uring_sqe* sqe = TakeSqe(connection, OperationKind.Receive);
        int blockSize = MemoryPool.MaxBufferSize;
        int sizeHint = blockSize > 0 ? Math.Min(Options.ReceiveBufferSize, Math.Max(1, blockSize / 2)) : Options.ReceiveBufferSize;
        Memory<byte> memory = connection.RentReceiveMemory(sizeHint);
        // Pinned by RentReceiveMemory until the completion.
        sqe->opcode = IORING_OP_RECV;
        sqe->fd = FdOf(connection.Socket);
        sqe->addr = (ulong)Unsafe.AsPointer(ref MemoryMarshal.GetReference(memory.Span));
        sqe->len = (uint)memory.Length;
        state.Polling = false;
        state.ReceiveLength = memory.Length;
        Track(sqe, connection, OperationKind.Receive);
    }

    private static IoUringConnectionState StateOf(ProactorConnection connection)
        => connection.BackendState as IoUringConnectionState ?? (IoUringConnectionState)(connection.BackendState = new IoUringConnectionState());

    private void OnReceiveCompletion(ProactorConnection connection, in io_uring_cqe cqe)
    {
        bool more = (cqe.flags & IORING_CQE_F_MORE) != 0;
        if (cqe.res == -Errno.ENOBUFS && !more && _bufferRing is not null)
        {
            // Every buffer of the ring was in use when data arrived. Nothing was lost: the data waits in the
            // socket. Retried once a buffer is back. (Without a ring, ENOBUFS is the socket's own error.)
            Context.Metrics.NoBufferCount.Add(1);
            _bufferRing.OnExhausted();
            QueueForBuffer(connection);
            return;
        }

        if (connection.BackendState is IoUringConnectionState receiving)
        {
            // Data (or the receive's end): a retry that got here was served; its next wait starts a new turn.
            EndRetry(receiving);
        }

        if ((cqe.flags & IORING_CQE_F_BUFFER) != 0)
        {
            OnBufferReceived(connection, cqe, more);
            return;
        }

        if (connection.BackendState is IoUringConnectionState state)
        {
            if (state.Polling)
            {
                OnPollCompleted(connection, state, cqe.res);
                return;
            }

            state.ReceiveFilled = cqe.res > 0 && cqe.res == state.ReceiveLength;
        }

        DispatchCompletion(connection, OperationKind.Receive, ToResult(cqe.res), more, default, null);
    }

    private void OnBufferReceived(ProactorConnection connection, in io_uring_cqe cqe, bool more)
    {
        ushort bufferId = (ushort)(cqe.flags >> IORING_CQE_BUFFER_SHIFT);
        ReadOnlySpan<byte> data = _bufferRing!.GetData(bufferId, Math.Max(cqe.res, 0));
        _deliveringBufferId = bufferId;
        _deliveredBufferTaken = false;
        try
        {
            BufferReceivedForTests?.Invoke(connection);
            // What the handler returns is not trusted for the buffer's fate: it may throw after the pipe took it.
            DispatchCompletion(connection, OperationKind.Receive, ToResult(cqe.res), more, data, null, bufferId);
        }
        finally
        {
            bool taken = _deliveredBufferTaken;
            _deliveringBufferId = -1;
            _deliveredBufferTaken = false;
            if (!taken)
            {
                _bufferRing.Return(bufferId);
            }
        }
    }

    /// <summary>
    /// Basic tier: the socket is readable (or failed, or the poll was cancelled). Readable: the receive proper
    /// goes out now, into memory taken now; the connection sees only its completion. Otherwise the receive ends
    /// here, as a receive would have.
    /// </summary>
    private void OnPollCompleted(ProactorConnection connection, IoUringConnectionState state, int res)
    {
        state.Polling = false;
        if (res >= 0 && !state.PollCancelled && !connection.IsClosing)
        {
            try
            {
                SubmitReceiveIntoPipe(connection, state);
            }
            catch (Exception ex)
            {
                // As a throw in the receive's handler: this connection pays, and its close does not wait for a
                // receive that never went out.
                OnHandlerFault(connection, OperationKind.Receive, operationEnded: true, ex);
                connection.AdvanceClose();
            }

            return;
        }

        DispatchCompletion(connection, OperationKind.Receive, ToResult(res >= 0 ? -Errno.ECANCELED : res), more: false, default, null);
    }

    /// <summary>
    /// Queues a receive that waits for a buffer: found the ring empty (-ENOBUFS), or came while others wait. The
    /// queue is served in turn: a receive gets a new turn (the back of the queue) when it starts waiting, but one
    /// that was retried and found the ring empty again, without data in between, keeps the turn it had. Without
    /// that, every retry round reordered the queue by completion, and the connection that took the buffer (its
    /// data, then its own -ENOBUFS, complete before the others' retries are even looked at) came first again: it
    /// was served until its socket was drained while the rest waited, for as long as the whole transfer when the
    /// ring is small and its peer keeps sending.
    /// </summary>
    private void QueueForBuffer(ProactorConnection connection)
    {
        IoUringConnectionState state = StateOf(connection);
        if (!state.RetriedForBuffer)
        {
            state.ReceiveTurn = ++_lastReceiveTurn;
        }

        EndRetry(state);
        connection.OnReceiveStarved();
        InsertByTurn(_receiveRetries, connection, state.ReceiveTurn);
        _receivesStarved = true;
        // Counted in flight while it waits (after -ENOBUFS: still, until resubmitted); the retry hands the count on.
        Table.OnSubmitted(connection.Token);
    }

    // A retried receive completed (or failed to go out): it no longer holds fresh receives back.
    private void EndRetry(IoUringConnectionState state)
    {
        if (state.RetriedForBuffer)
        {
            state.RetriedForBuffer = false;
            _retriesUnanswered--;
        }
    }

    // Keeps the queue ordered by turn; a new turn (the usual case) goes at the back at once.
    private static void InsertByTurn(List<ProactorConnection> queue, ProactorConnection connection, long turn)
    {
        int at = queue.Count;
        while (at > 0 && StateOf(queue[at - 1]).ReceiveTurn > turn)
        {
            at--;
        }

        queue.Insert(at, connection);
    }

    /// <summary>
    /// Resubmits the receives that wait for a buffer, in turn, once the ring has a buffer for them by this dispatcher's
    /// count (all buffers handed to the kernel, minus those whose completions arrived, plus those returned). Until
    /// then they wait: a retry with none would find the ring empty again at once, and an application thread that
    /// returns a buffer wakes the dispatcher while receives are starved. A count that is ahead of the kernel (it has
    /// filled buffers whose completions are still coming) costs one more round trip, no more: those completions
    /// correct it. All of them go out, first turn first: the kernel gives the buffers to the first that have data,
    /// and a receive that finds no data waits for it without holding a buffer (retrying only as many as there are
    /// buffers could leave the rest waiting behind one that has nothing to receive, with nothing to wake the
    /// dispatcher). Receives of a connection that is closing or paused end at once, as cancelled.
    /// </summary>
    private void RetryStarvedReceives()
    {
        if (_receiveRetries.Count == 0)
        {
            return;
        }

        bool buffers = _bufferRing!.Available > 0;
        // Worked through from a list of its own: ending a receive runs the connection's handler, which may queue one.
        (_retrying, _receiveRetries) = (_receiveRetries, _retrying);
        foreach (ProactorConnection connection in _retrying)
        {
            IoUringConnectionState state = StateOf(connection);
            // A cancel asked for before it was parked (a pause in the batch that brought its -ENOBUFS) went to the
            // kernel for a receive that had ended there, or is queued ahead of the retry: it cannot reach the receive
            // that would go out now. The receive ends here instead, or a multishot receive would stay armed past the
            // pause or the input's end. (While it is parked only its close asks for a cancel, which ends it anyway.)
            bool ending = connection.IsClosing || connection.IsReceivePaused || connection.ReceiveCancelRequested;
            if (!ending && !buffers)
            {
                InsertByTurn(_receiveRetries, connection, state.ReceiveTurn);
                continue;
            }

            connection.OnStarvedReceiveRetried();
            // The placeholder count taken when it was queued is handed to the new submission.
            Table.OnCompleted(connection.Token.ToUserData(OperationKind.Receive), final: true);
            if (ending)
            {
                // Closing, or paused for back-pressure while it waited for buffers: end the receive as
                // cancelled; the close goes on, or the resume re-arms.
                DispatchCompletion(connection, OperationKind.Receive, ToResult(-Errno.ECANCELED), more: false, default, null);
                continue;
            }

            StarvedReceiveRetries++;
            try
            {
                SubmitRingReceive(connection);
                state.RetriedForBuffer = true;
                _retriesUnanswered++;
            }
            catch (Exception ex)
            {
                // As a throw in the receive's handler: this connection pays, not the dispatcher.
                OnHandlerFault(connection, OperationKind.Receive, operationEnded: true, ex);
                connection.AdvanceClose();
            }
        }

        _retrying.Clear();
        _receivesStarved = _receiveRetries.Count != 0;
    }

    /// <summary>
    /// The end of the ring (after a failure, or a healthy end whose time ran out): receives still waiting for a buffer
    /// never reached the kernel, so the count each holds in flight ends here, no handler run, and its owner is released
    /// as done rather than kept with its memory as maybe-live.
    /// </summary>
    private void ForgetQueuedReceives()
    {
        foreach (ProactorConnection connection in _receiveRetries)
        {
            Table.OnCompleted(connection.Token.ToUserData(OperationKind.Receive), final: true);
        }

        _receiveRetries.Clear();
        _receivesStarved = false;
    }
}
