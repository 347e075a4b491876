using KestrelProactor.Dispatching;
using static KestrelProactor.Interop.Linux.Interop;
using static KestrelProactor.Interop.Linux.Interop.IoUring;

namespace KestrelProactor.IoUring;

/// <summary>
/// What a failed ring asks of the kernel before it closes. Closing the ring does not end its requests at once: they
/// live until the ring's last reference goes (with a registered ring descriptor, the dispatcher thread's exit) and
/// the kernel's exit work has cancelled them. Meanwhile a multishot accept is still armed on the listen socket the
/// listener takes to another ring, and since accept polls wake one waiter each, a connection may wake the dead one
/// and stay in the backlog with nobody to accept it. So the failed ring, unless it cannot be entered any more,
/// cancels everything (ANY|ALL) and reads what follows, closing the descriptors of accepts that completed meanwhile.
/// </summary>
internal sealed unsafe partial class IoUringDispatcher
{
    /// <summary>How long a failed ring waits for the kernel to answer its cancel before it closes anyway.</summary>
    private static readonly TimeSpan FailureCancelTimeout = TimeSpan.FromMilliseconds(500);

    /// <summary>A test switch: this ring, should it fail, skips the cancel, as one that can no longer be entered does.</summary>
    internal bool TestSkipCancelAfterFailure { get; set; }

    private void CancelEverythingAfterFailure(IoUringRing ring)
    {
        if (TestSkipCancelAfterFailure)
        {
            return;
        }

        io_uring_sqe* sqe = ring.TryGetSqe();
        if (sqe is null)
        {
            // A full SQ: every entry this thread can still submit is a NOP by now (the salvage made them so; with a
            // polling thread, what was published it takes anyway), so one enter that takes them makes room for the
            // cancel. If the kernel takes none, the ring's exit work cancels.
            if (!IsTransientEnterResult(ring.SubmitAndWait(0)) || (sqe = ring.TryGetSqe()) is null)
            {
                return;
            }
        }

        PrepareCancelEverything(sqe);
        bool answered = false;
        long deadline = Environment.TickCount64 + (long)FailureCancelTimeout.TotalMilliseconds;
        while (true)
        {
            const long SliceNanoseconds = 10_000_000;
            // Zero-copy notifications are waited for too (within the same bound): a block whose notification is read
            // here goes back to its pool rather than being kept for good at the teardown.
            bool waiting = !answered || ZeroCopySendsAwaitingNotification != 0;
            int result = ring.SubmitAndWait(waiting && ring.ReadyCompletions == 0 ? 1u : 0u, SliceNanoseconds);
            if (!IsTransientEnterResult(result) && result != -Errno.EBADR)
            {
                // The ring cannot be entered: what it holds ends with its exit work.
                return;
            }

            if (result == -Errno.EBADR)
            {
                // A ring that dropped completions answers every waiting enter so at once: no busy loop until the deadline.
                Thread.Sleep(1);
            }

            bool any = false;
            while (ring.TryPeekCompletion(0, out io_uring_cqe cqe))
            {
                ring.AdvanceCompletions(1);
                any = true;
                answered |= OnCompletionAfterFailure(cqe);
            }

            // Once answered, one more pass without a wait collects what the cancel ended (posted as task work).
            if ((answered && !any && ZeroCopySendsAwaitingNotification == 0) || Environment.TickCount64 > deadline)
            {
                return;
            }
        }
    }

    /// <summary>
    /// A zero-copy send's result or notification read after the failure: the books of <see cref="OnZeroCopySendCompletion"/>
    /// without its handler. A block whose notification came (or whose result says none follows) goes back with its pins
    /// and holds, since the kernel no longer reads its pages; one still awaiting its notification is kept at the teardown.
    /// </summary>
    private void OnZeroCopyCompletionAfterFailure(in io_uring_cqe cqe)
    {
        IoUringSendBlock block = ZeroCopyBlockOf(cqe.user_data);
        if ((cqe.flags & IORING_CQE_F_NOTIF) != 0)
        {
            OnZeroCopyNotification(block);
        }
        else
        {
            // Its owner, released after the salvage, no longer holds memory the kernel may read through this send.
            EndZeroCopySend(block, cqe.flags);
        }
    }

    /// <summary>A completion read after the failure: no handler runs; an accepted descriptor is closed. True for the cancel's own.</summary>
    private bool OnCompletionAfterFailure(in io_uring_cqe cqe)
    {
        ulong userData = cqe.user_data;
        if (userData == QuiesceCancelUserData)
        {
            return true;
        }

        if (userData == AbandonedUserData)
        {
            return false;
        }

        if ((userData & ZeroCopyTag) != 0)
        {
            OnZeroCopyCompletionAfterFailure(cqe);
            return false;
        }

        OperationKind kind = OperationToken.KindOf(userData);
        if (kind == OperationKind.Wake)
        {
            return false;
        }

        // The operation is over: its owner, released below as after any failure, no longer counts it in flight.
        bool final = (cqe.flags & IORING_CQE_F_MORE) == 0;
        IOperationOwner? owner = Table.OnCompleted(userData, final);
        if (final)
        {
            RecycleCopiedSendAfterFailure(owner, kind);
        }
        if (kind == OperationKind.Accept && cqe.res >= 0)
        {
            Sys.close(cqe.res);
        }

        return false;
    }
}
