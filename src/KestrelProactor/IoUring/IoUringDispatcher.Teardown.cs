using KestrelProactor.Dispatching;
using static KestrelProactor.Interop.Linux.Interop;
using static KestrelProactor.Interop.Linux.Interop.IoUring;

namespace KestrelProactor.IoUring;

/// <summary>
/// What the ring does between the end of its loop and its close. A healthy ring (a stop, or a stop whose deadline
/// passed) first hands the kernel what is still queued, asks it to cancel everything, and runs the completions that
/// follow for a bounded time, so queued closes reach the kernel and what the table still counts afterwards is truly
/// maybe-live. A failed ring is given nothing more to do: the closes it had queued are done here, and descriptors
/// that completed accepts installed are closed from the mapped completion queue and from the completions the kernel
/// held back while it was full (posted by enters that submit nothing and wait for nothing).
/// </summary>
internal sealed unsafe partial class IoUringDispatcher
{
    /// <summary>
    /// The user data of the cancel-everything request. No operation token has it (a token's byte above its kind is
    /// always 0, and 0xFF is no kind), nor a zero-copy send (its top bit is clear), nor an abandoned SQE
    /// (<see cref="AbandonedUserData"/>, whose completion was taken for the cancel's answer when both were all ones).
    /// </summary>
    internal const ulong QuiesceCancelUserData = ulong.MaxValue >> 1;

    /// <summary>Cancelled requests the ring had when it ended (for tests and logs).</summary>
    internal long QuiesceCancelled { get; private set; }

    protected override void QuiesceKernel()
    {
        IoUringRing? ring = _ring;
        if (ring is null)
        {
            return;
        }

        // Completions the fault layer held back are the kernel's, posted already: handled first, so what their
        // handlers queue goes out before the cancel and is caught by it.
        bool heldAnswered = false;
        foreach (io_uring_cqe held in TakeAllHeld() ?? [])
        {
            HandleQuiesceCompletion(held, ref heldAnswered);
        }

        // Closes and shutdowns queued in the last pass go out first, so the cancel below cannot catch them.
        ThrowIfEnterFailed(ring.SubmitAndWait(0));
        // ANY|ALL (5.19): every request of this ring. Always, even with no owner left: the wake-up read is armed too
        // (not counted in the table), and its 8-byte buffer is freed right after the ring closes, which on some
        // kernels does not end the read at once. An older kernel answers -EINVAL; the owners' own cancels, submitted
        // when the stop aborted them, are then all there is.
        PrepareCancelEverything(NextSqe());
        bool cancelAnswered = false;

        long deadline = Environment.TickCount64 + (long)QuiesceTimeout.TotalMilliseconds;
        while (true)
        {
            // Handlers go on as in the loop: a cancelled receive moves its connection's close on, a pipe
            // continuation queued by a close runs here.
            RunWorkItems();
            if (_bufferRing is not null)
            {
                DrainReturnedBuffers();
                RetryStarvedReceives();
                _bufferRing.Publish();
            }

            // A zero-copy send's notification is waited for too: a peer that acknowledges within the time lets its
            // memory go back to the pool instead of being kept for good at the teardown.
            bool waiting = !cancelAnswered || Table.InFlight != 0 || ZeroCopySendsAwaitingNotification != 0;
            const long SliceNanoseconds = 10_000_000;
            ThrowIfEnterFailed(ring.SubmitAndWait(waiting && ring.ReadyCompletions == 0 ? 1u : 0u, SliceNanoseconds));
            while (ring.TryPeekCompletion(0, out io_uring_cqe cqe))
            {
                ring.AdvanceCompletions(1);
                HandleQuiesceCompletion(cqe, ref cancelAnswered);
            }

            bool settled = cancelAnswered && Table.InFlight == 0 && ZeroCopySendsAwaitingNotification == 0 && ring.PendingSubmissions == 0;
            if (settled || Environment.TickCount64 > deadline)
            {
                ForgetQueuedReceives();
                return;
            }
        }
    }

    private void HandleQuiesceCompletion(in io_uring_cqe cqe, ref bool cancelAnswered)
    {
        if (cqe.user_data == QuiesceCancelUserData)
        {
            cancelAnswered = true;
            QuiesceCancelled = Math.Max(0, cqe.res);
            return;
        }

        switch (OperationToken.KindOf(cqe.user_data))
        {
            case OperationKind.Wake:
                // Cancelled (or a last wake-up): not armed again, nothing wakes an ending ring.
                return;
            case OperationKind.Accept:
                // A connection accepted now would start on a ring about to close: the descriptor is closed and the
                // listener, which keeps its socket, is released (and moved, if another ring lives) at the end.
                Table.OnCompleted(cqe.user_data, final: (cqe.flags & IORING_CQE_F_MORE) == 0);
                if (cqe.res >= 0)
                {
                    Sys.close(cqe.res);
                }

                return;
            default:
                HandleCompletion(cqe);
                return;
        }
    }

    /// <summary>
    /// A zero-copy send's pages sit in the socket's queue until the peer acknowledges them and the notification is
    /// posted; closing the ring does not end that, whatever DEFER_TASKRUN does for other operations.
    /// </summary>
    protected override bool HoldsMemoryBeyondQueue(IOperationOwner owner)
        => owner is Internal.ProactorConnection { SendState: IoUringSendBlock block } && block.IsZeroCopy && !block.NotificationArrived;

    protected override void SalvageAfterFailure()
    {
        IoUringRing? ring = _ring;
        if (ring is null)
        {
            return;
        }

        // A close the kernel never took: its handle was marked closed as the SQE was filled, so nobody else closes
        // the descriptor. It is closed here, with the linger an abortive close set on it.
        // Every other entry the kernel never took is undone too: the cancel-everything enter below submits whatever
        // is queued before it, and a send, shutdown or accept among them would still run after the failure. Each
        // becomes a plain NOP. A close keeps its user data (its completion ends the close); any other is marked
        // abandoned (an accept-kind NOP must not be read as an accepted descriptor 0) and counted off here: the kernel
        // never saw it, so it holds nothing of its owner's, which is then released as done rather than kept with its
        // memory, and a zero-copy send's block lets go of its pool blocks.
        // Memory writes and closes first, so nothing that may throw stands between an untaken close and its descriptor.
        (uint start, uint end) = ring.UntakenSubmissions;
        var untaken = new List<ulong>();
        for (uint position = start; position != end; position++)
        {
            io_uring_sqe* sqe = ring.SqeAt(position);
            ulong userData = sqe->user_data;
            bool close = sqe->opcode == IORING_OP_CLOSE && OperationToken.KindOf(userData) == OperationKind.Close;
            if (close)
            {
                Sys.close(sqe->fd);
            }
            else
            {
                untaken.Add(userData);
            }

            *sqe = default;
            sqe->opcode = IORING_OP_NOP;
            sqe->user_data = close ? userData : AbandonedUserData;
        }

        foreach (ulong userData in untaken)
        {
            try
            {
                CountOffUntaken(userData);
            }
            catch (Exception ex)
            {
                // A pool's return threw: that one operation's books stay as they were (its owner kept as maybe-live).
                Internal.ProactorLog.WorkItemFault(Logger, Id, ex);
            }
        }

        // Completed accepts nobody will read: each installed a descriptor that would otherwise stay open for the
        // life of the process. Every completion is counted off (no handler runs): an owner whose operations all
        // ended is released as done, the others as maybe-live. Those the kernel held back while the CQ was full are posted by an enter that submits nothing and waits for
        // nothing, as many as fit each time, and read the same way.
        foreach (io_uring_cqe held in TakeAllHeld() ?? [])
        {
            OnCompletionAfterFailure(held);
        }

        for (int round = 0; ; round++)
        {
            while (ring.TryPeekCompletion(0, out io_uring_cqe cqe))
            {
                ring.AdvanceCompletions(1);
                // Counted off as any completion read after the failure (an accept's descriptor closed), so an owner
                // whose operations all ended here is not kept as maybe-live.
                OnCompletionAfterFailure(cqe);
            }

            if (!ring.HasOverflowBacklog || round == MaxBacklogFlushes || ring.FlushCompletionBacklog() < 0)
            {
                break;
            }
        }

        // Receives queued for a buffer never went out: their counts end with nothing for the kernel to finish.
        ForgetQueuedReceives();

        // Then nothing may stay armed in the kernel (IoUringDispatcher.FailureCancel.cs).
        CancelEverythingAfterFailure(ring);
    }

    /// <summary>An operation the failed ring queued and the kernel never took ends for the books: no completion will.</summary>
    private void CountOffUntaken(ulong userData)
    {
        if (userData == AbandonedUserData || userData == QuiesceCancelUserData)
        {
            return;
        }

        if ((userData & ZeroCopyTag) != 0)
        {
            // No result and no notification will come: the block goes back with its pins and holds.
            EndZeroCopySend(ZeroCopyBlockOf(userData), flags: 0);
            return;
        }

        if (OperationToken.KindOf(userData) == OperationKind.Wake)
        {
            return;
        }

        IOperationOwner? owner = Table.OnCompleted(userData, final: true);
        RecycleCopiedSendAfterFailure(owner, OperationToken.KindOf(userData));
    }

    /// <summary>
    /// A copied send that is over for the kernel after a failure (never taken, or its completion read): its block (the
    /// native header, the pins) is idle again, so the teardown frees it. A zero-copy block has books of its own.
    /// </summary>
    private void RecycleCopiedSendAfterFailure(IOperationOwner? owner, OperationKind kind)
    {
        if (kind == OperationKind.Send && owner is Internal.ProactorConnection { SendState: IoUringSendBlock { IsZeroCopy: false } block } connection)
        {
            connection.SendState = null;
            RecycleSendBlock(block);
        }
    }

    /// <summary>Bounds the reading of a failed ring's held-back completions (each flush posts up to a CQ's worth).</summary>
    private const int MaxBacklogFlushes = 4096;

    /// <summary>An ASYNC_CANCEL of every request of this ring (ANY|ALL, 5.19+), answered under <see cref="QuiesceCancelUserData"/>.</summary>
    private static void PrepareCancelEverything(io_uring_sqe* sqe)
    {
        *sqe = default;
        sqe->opcode = IORING_OP_ASYNC_CANCEL;
        sqe->fd = -1;
        sqe->op_flags = IORING_ASYNC_CANCEL_ANY | IORING_ASYNC_CANCEL_ALL;
        sqe->user_data = QuiesceCancelUserData;
    }

    /// <summary>
    /// An enter that did not fail for good: it may have done nothing (EINTR, EAGAIN, EBUSY while the kernel holds
    /// completions we have not read), or a bounded wait ran out (ETIME).
    /// </summary>
    private static bool IsTransientEnterResult(int result)
        => result >= 0 || result == -Errno.EBUSY || result == -Errno.EAGAIN || result == -Errno.EINTR || result == -Errno.ETIME;

    private static void ThrowIfEnterFailed(int result)
    {
        if (!IsTransientEnterResult(result))
        {
            throw new IoUringException($"io_uring_enter failed while the ring ended: {Errno.Name(-result)}", -result);
        }
    }
}
