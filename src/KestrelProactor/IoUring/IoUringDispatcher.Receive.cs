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
    private readonly List<ProactorConnection> _receiveRetries = new();
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
            io_uring_sqe* sqe = TakeSqe(connection, OperationKind.Receive);
            sqe->opcode = IORING_OP_RECV;
            sqe->fd = FdOf(connection.Socket);
            // The kernel picks a buffer only when data has arrived (len 0: the buffer's size).
            sqe->flags = IOSQE_BUFFER_SELECT;
            sqe->buf_index = _bufferRing.GroupId;
            if (_multishotReceive)
            {
                // Stays armed: one completion per arrival, each with a buffer, until cancelled or the peer ends.
                sqe->ioprio = IORING_RECV_MULTISHOT;
            }

            Track(sqe, connection, OperationKind.Receive);
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
            connection.OnReceiveStarved();
            _receiveRetries.Add(connection);
            _receivesStarved = true;
            Table.OnSubmitted(connection.Token); // still counted as in flight until resubmitted
            return;
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
    /// Resubmits the receives that found the ring empty, once the ring has a buffer for them by this dispatcher's
    /// count (all buffers handed to the kernel, minus those whose completions arrived, plus those returned). Until
    /// then they wait: a retry with none would find the ring empty again at once, and an application thread that
    /// returns a buffer wakes the dispatcher while receives are starved. A count that is ahead of the kernel (it has
    /// filled buffers whose completions are still coming) costs one more round trip, no more: those completions
    /// correct it. Receives of a connection that is closing or paused end at once, as cancelled.
    /// </summary>
    private void RetryStarvedReceives()
    {
        if (_receiveRetries.Count == 0)
        {
            return;
        }

        bool buffers = _bufferRing!.Available > 0;
        int kept = 0;
        for (int i = 0; i < _receiveRetries.Count; i++)
        {
            ProactorConnection connection = _receiveRetries[i];
            bool ending = connection.IsClosing || connection.IsReceivePaused;
            if (!ending && !buffers)
            {
                _receiveRetries[kept++] = connection;
                continue;
            }

            connection.OnStarvedReceiveRetried();
            // The placeholder count taken at -ENOBUFS is handed to the new submission.
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
                SubmitReceive(connection);
            }
            catch (Exception ex)
            {
                // As a throw in the receive's handler: this connection pays, not the dispatcher.
                OnHandlerFault(connection, OperationKind.Receive, operationEnded: true, ex);
                connection.AdvanceClose();
            }
        }

        _receiveRetries.RemoveRange(kept, _receiveRetries.Count - kept);
        _receivesStarved = kept != 0;
    }
}
