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
            // A full SQ the kernel did not take: entering again would not help; the ring's exit work cancels.
            return;
        }

        PrepareCancelEverything(sqe);
        bool answered = false;
        long deadline = Environment.TickCount64 + (long)FailureCancelTimeout.TotalMilliseconds;
        while (true)
        {
            const long SliceNanoseconds = 10_000_000;
            int result = ring.SubmitAndWait(answered ? 0u : 1u, SliceNanoseconds);
            if (!IsTransientEnterResult(result) && result != -Errno.EBADR)
            {
                // The ring cannot be entered: what it holds ends with its exit work.
                return;
            }

            bool any = false;
            while (ring.TryPeekCompletion(0, out io_uring_cqe cqe))
            {
                ring.AdvanceCompletions(1);
                any = true;
                answered |= OnCompletionAfterFailure(cqe);
            }

            // Once answered, one more pass without a wait collects what the cancel ended (posted as task work).
            if ((answered && !any) || Environment.TickCount64 > deadline)
            {
                return;
            }
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

        if (userData == AbandonedUserData || (userData & ZeroCopyTag) != 0)
        {
            return false;
        }

        OperationKind kind = OperationToken.KindOf(userData);
        if (kind == OperationKind.Wake)
        {
            return false;
        }

        // The operation is over: its owner, released below as after any failure, no longer counts it in flight.
        Table.OnCompleted(userData, final: (cqe.flags & IORING_CQE_F_MORE) == 0);
        if (kind == OperationKind.Accept && cqe.res >= 0)
        {
            Sys.close(cqe.res);
        }

        return false;
    }
}
