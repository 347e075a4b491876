using System.Diagnostics;
using System.Net;
using KestrelProactor.Dispatching;
using KestrelProactor.Internal;
using static KestrelProactor.Interop.Linux.Interop;
using static KestrelProactor.Interop.Linux.Interop.IoUring;

namespace KestrelProactor.IoUring;

/// <summary>
/// Fault injection at the kernel boundary (see <see cref="IoUringFaultPlan"/>). With no plan, <see cref="_faults"/> is
/// null and the loop takes none of these paths. With one, real completions and submissions are perturbed the way the
/// kernel could have done it:
/// <list type="bullet">
/// <item>submissions: a send (copied or zero-copy) is shortened (the kernel sends less, the connection sends the rest)
/// or turned into a NOP that fails with EAGAIN; a zero-copy send into one that fails with EOPNOTSUPP (the socket has no
/// zero-copy: the connection copies from then on); such a zero-copy NOP's result gets F_MORE and a notification
/// follows, as the kernel answers a zero-copy send that failed once prepared; a ring-tier receive is turned into a NOP that fails with ENOBUFS (retried once a buffer is
/// there) or ECANCELED;</item>
/// <item>completions: a receive is split in two (a prefix in its buffer, the rest copied after it), or fails with
/// ECONNRESET/ETIMEDOUT (a buffer it carried still goes back), or is preceded by an ENOBUFS that keeps F_MORE; a send fails
/// with EPIPE/ECONNRESET/ETIMEDOUT; an accept fails with EMFILE/ENFILE/ECONNABORTED after its descriptor is really
/// closed; a zero-copy send's result fails so too, its notification still to come when F_MORE says so; a close fails with EBADF/EIO after the descriptor was really closed; a shutdown fails with ENOTCONN;</item>
/// <item>completions are held back for a few passes (one owner's stay in order), which reorders them across owners;</item>
/// <item>an enter is skipped and reports EINTR, EAGAIN or EBUSY;</item>
/// <item>the dispatcher is killed (a ring error, a dropped completion, EBADR from an enter, or a ring error during
/// its stop).</item>
/// </list>
/// F_MORE is never cleared: a multishot operation that a fault ended for its owner is still armed in the kernel, and
/// the owner's close cancels it, as after a real error that leaves it armed. Faults that lose or break the bytes of a
/// connection name its client port (<see cref="ProactorFaultPlan.TouchedPorts"/>); the others must be invisible.
/// </summary>
internal sealed unsafe partial class IoUringDispatcher
{
    private readonly IoUringFaultInjector? _faults;
    private readonly List<io_uring_cqe> _dueCompletions = new();

    /// <summary>The start of a pass with faults: a kill that is due goes in, held completions that are due are delivered.</summary>
    private void BeginPassWithFaults(IoUringRing ring)
    {
        IoUringFaultInjector faults = _faults!;
        faults.BeginPass();
        switch (faults.KillMode)
        {
            case IoUringKillMode.RingError when faults.Completions >= faults.Plan.KillAfterCompletions:
            case IoUringKillMode.RingErrorDuringStop when StopRequested:
                Kill(faults, "ring error");
                throw new IoUringException("injected ring failure (fault plan)", Errno.EIO);
            case IoUringKillMode.DroppedCompletion when faults.Completions >= faults.Plan.KillAfterCompletions:
                Kill(faults, "dropped completion");
                ring.CountDroppedCompletionForTests();
                break;
        }
    }

    private void Kill(IoUringFaultInjector faults, string how)
    {
        faults.Killed = true;
        // What was held back is delivered first: the kernel had posted it, so the ring's end must see it.
        DeliverHeld(all: true);
        faults.Plan.RecordKill(this, how);
    }

    /// <summary>An enter, unless the plan skips it and answers EINTR, EAGAIN or EBUSY (or EBADR, to kill).</summary>
    private int EnterWithFaults(IoUringRing ring, bool wait, long waitNanoseconds)
    {
        IoUringFaultInjector faults = _faults!;
        if (faults.KillMode == IoUringKillMode.EnterDropped && faults.Completions >= faults.Plan.KillAfterCompletions)
        {
            Kill(faults, "EBADR from enter");
            return -Errno.EBADR;
        }

        if (faults.Roll() && faults.Plan.Allows("enter"))
        {
            int errno = faults.Pick(Errno.EINTR, Errno.EAGAIN, Errno.EBUSY);
            faults.Plan.Count("enter " + Errno.Name(errno));
            return -errno;
        }

        // Held completions must not wait behind a sleep for new ones.
        bool mayWait = wait && ring.ReadyCompletions == 0 && !faults.HasHeld;
        return ring.SubmitAndWait(mayWait ? 1u : 0u, waitNanoseconds);
    }

    /// <summary>
    /// The ring is ending (a stop's quiesce, a failure's salvage): every completion still held back is handed over,
    /// since the kernel posted it, for the caller to handle as the end handles completions, with no further fault.
    /// </summary>
    private List<io_uring_cqe>? TakeAllHeld()
    {
        if (_faults is not { HasHeld: true } faults)
        {
            return null;
        }

        var held = new List<io_uring_cqe>();
        faults.TakeDue(held, all: true);
        return held;
    }

    /// <summary>Delivers held completions that are due (all once a stop was asked for: a stop never waits on a hold).</summary>
    private void DeliverHeld(bool all)
    {
        _faults!.TakeDue(_dueCompletions, all || StopRequested);
        try
        {
            foreach (io_uring_cqe cqe in _dueCompletions)
            {
                DeliverWithFaults(cqe);
            }
        }
        finally
        {
            _dueCompletions.Clear();
        }
    }

    private void HandleCompletionWithFaults(io_uring_cqe cqe)
    {
        IoUringFaultInjector faults = _faults!;
        faults.Completions++;
        ulong userData = cqe.user_data;
        bool zeroCopy = (userData & ZeroCopyTag) != 0;
        if (userData == AbandonedUserData || (!zeroCopy && OperationToken.KindOf(userData) == OperationKind.Wake))
        {
            HandleCompletion(cqe);
            return;
        }

        // A zero-copy send a fault failed (a NOP) is answered as the kernel answers one that failed after its
        // preparation (6.0+): F_MORE on the result, and a notification after it, a few passes later.
        bool notificationFollows = zeroCopy && (cqe.flags & IORING_CQE_F_NOTIF) == 0 && faults.TakeZeroCopyNop(userData);
        if (notificationFollows)
        {
            cqe.flags |= IORING_CQE_F_MORE;
        }

        // One owner's completions keep their order: behind a held one, the next is held too.
        ulong key = zeroCopy ? userData : userData >> 16;
        if (faults.IsHeld(key) || (!StopRequested && faults.Roll() && faults.Plan.Allows("hold")))
        {
            if (!faults.IsHeld(key))
            {
                faults.Plan.Count("held back");
            }

            faults.Hold(cqe, key);
        }
        else
        {
            DeliverWithFaults(cqe);
        }

        if (notificationFollows)
        {
            faults.Hold(new io_uring_cqe { user_data = userData, res = 0, flags = IORING_CQE_F_NOTIF }, key);
        }
    }

    /// <summary>A completion, perhaps changed the way the kernel could have answered.</summary>
    private void DeliverWithFaults(io_uring_cqe cqe)
    {
        IoUringFaultInjector faults = _faults!;
        ulong userData = cqe.user_data;
        if (!faults.Roll())
        {
            HandleCompletion(cqe);
            return;
        }

        if ((userData & ZeroCopyTag) != 0)
        {
            DeliverZeroCopyWithFault(cqe);
            return;
        }

        OperationKind kind = OperationToken.KindOf(userData);
        IOperationOwner? owner = Table.Peek(userData);
        var connection = owner as ProactorConnection;
        bool more = (cqe.flags & IORING_CQE_F_MORE) != 0;
        switch (kind)
        {
            case OperationKind.Receive when connection is not null && cqe.res > 0:
                if ((cqe.flags & IORING_CQE_F_BUFFER) != 0 && cqe.res >= 2 && faults.Next(0, 2) == 0 && faults.Plan.Allows("split"))
                {
                    faults.Plan.Count("receive split");
                    DeliverSplitReceive(connection, cqe, faults.Next(1, cqe.res));
                    return;
                }

                if (more && faults.Next(0, 2) == 0 && faults.Plan.Allows("enobufs-more"))
                {
                    // A multishot receive that stays armed reports ENOBUFS: the connection ends, the data after it is
                    // dropped by the closing connection, and its close cancels the receive.
                    Fault(connection, "receive ENOBUFS with F_MORE");
                    HandleCompletion(new io_uring_cqe { user_data = userData, res = -Errno.ENOBUFS, flags = IORING_CQE_F_MORE });
                    break;
                }

                if (!faults.Plan.Allows("receive-error"))
                {
                    break;
                }

                cqe.res = -faults.Pick(Errno.ECONNRESET, Errno.ETIMEDOUT);
                Fault(connection, "receive " + Errno.Name(-cqe.res));
                break;
            case OperationKind.Send when connection is not null && cqe.res >= 0 && faults.Plan.Allows("send-error"):
                cqe.res = -faults.Pick(Errno.EPIPE, Errno.ECONNRESET, Errno.ETIMEDOUT);
                Fault(connection, "send " + Errno.Name(-cqe.res));
                break;
            case OperationKind.Accept when cqe.res >= 0 && faults.Plan.Allows("accept"):
                // The descriptor the kernel installed is closed for real: its peer sees the connection end.
                faults.Plan.Touch(PeerPort(cqe.res), "accept");
                Sys.close(cqe.res);
                cqe.res = -faults.Pick(Errno.EMFILE, Errno.ENFILE, Errno.ECONNABORTED);
                faults.Plan.Count("accept " + Errno.Name(-cqe.res));
                break;
            case OperationKind.Close when connection is not null && cqe.res == 0 && faults.Plan.Allows("close"):
                // The descriptor is closed (the kernel closes it even when it reports an error).
                cqe.res = -faults.Pick(Errno.EBADF, Errno.EIO);
                Fault(connection, "close " + Errno.Name(-cqe.res));
                break;
            case OperationKind.Shutdown when connection is not null && cqe.res == 0 && faults.Plan.Allows("shutdown"):
                cqe.res = -Errno.ENOTCONN;
                Fault(connection, "shutdown ENOTCONN");
                break;
        }

        HandleCompletion(cqe);
    }

    /// <summary>
    /// A zero-copy send's result fails with EPIPE, ECONNRESET or ETIMEDOUT, as when the connection broke while the kernel
    /// queued it. Its flags stay: when F_MORE says a notification follows, the kernel pinned pages and lets go of them
    /// later, so the block must still wait for that notification. Notifications themselves are never changed (only held).
    /// </summary>
    private void DeliverZeroCopyWithFault(io_uring_cqe cqe)
    {
        if ((cqe.flags & IORING_CQE_F_NOTIF) == 0 && cqe.res >= 0 && _faults!.Plan.Allows("send-error"))
        {
            IoUringSendBlock block = ZeroCopyBlockOf(cqe.user_data);
            if (block.Connection is { } connection && ReferenceEquals(Table.Peek(block.OwnerUserData), connection))
            {
                cqe.res = -_faults.Pick(Errno.EPIPE, Errno.ECONNRESET, Errno.ETIMEDOUT);
                Fault(connection, "zero-copy send " + Errno.Name(-cqe.res));
            }
        }

        HandleCompletion(cqe);
    }

    /// <summary>
    /// Delivers a buffer-ring receive in two: the first <paramref name="prefix"/> bytes in the buffer the kernel filled
    /// (marked F_MORE, so the receive stays open for its owner), then the rest, copied, with the kernel's own flags.
    /// </summary>
    private void DeliverSplitReceive(ProactorConnection connection, in io_uring_cqe cqe, int prefix)
    {
        ushort bufferId = (ushort)(cqe.flags >> IORING_CQE_BUFFER_SHIFT);
        // Read without GetData, which counts the buffer as lent: the delivery below does that once.
        byte[] rest = _bufferRing!.GetMemory(bufferId).Span[prefix..cqe.res].ToArray();
        bool more = (cqe.flags & IORING_CQE_F_MORE) != 0;
        HandleCompletion(new io_uring_cqe { user_data = cqe.user_data, res = prefix, flags = cqe.flags | IORING_CQE_F_MORE });
        IOperationOwner? owner = Table.OnCompleted(cqe.user_data, final: !more);
        if (ReferenceEquals(owner, connection))
        {
            DispatchCompletion(connection, OperationKind.Receive, IoResult.Success(rest.Length), more, rest, null);
        }
    }

    /// <summary>Submission side: called once an SQE is filled and counted for its owner.</summary>
    private void InjectAtSubmission(io_uring_sqe* sqe, IOperationOwner owner, OperationKind kind)
    {
        IoUringFaultInjector faults = _faults!;
        if (owner is not ProactorConnection connection || !faults.Roll())
        {
            return;
        }

        if (kind == OperationKind.Send && sqe->opcode is IORING_OP_SEND or IORING_OP_SENDMSG or IORING_OP_SEND_ZC or IORING_OP_SENDMSG_ZC)
        {
            bool zeroCopy = sqe->opcode is IORING_OP_SEND_ZC or IORING_OP_SENDMSG_ZC;
            if (zeroCopy && faults.Next(0, 4) == 0 && faults.Plan.Allows("zero-copy-refused"))
            {
                // The socket has no zero-copy (as a Unix domain socket answers): nothing sent, a notification still
                // follows; the connection's sends are copied from now on, this one first.
                faults.Plan.Count("zero-copy EOPNOTSUPP");
                InjectResult(sqe, -Errno.EOPNOTSUPP);
                return;
            }

            if (faults.Next(0, 3) == 0 && faults.Plan.Allows("send-eagain"))
            {
                // A send the kernel's worker tried on a non-blocking socket: nothing sent, sent again unseen.
                faults.Plan.Count("send EAGAIN");
                InjectResult(sqe, -Errno.EAGAIN);
                return;
            }

            // A short send: the kernel takes less than it was offered; the connection sends the rest.
            if (!faults.Plan.Allows("short-send"))
            {
                return;
            }

            if (sqe->opcode is IORING_OP_SEND or IORING_OP_SEND_ZC && sqe->len >= 2)
            {
                sqe->len = (uint)faults.Next(1, (int)sqe->len);
                faults.Plan.Count("short send");
            }
            else if (sqe->opcode is IORING_OP_SENDMSG or IORING_OP_SENDMSG_ZC)
            {
                var header = (Sys.msghdr*)sqe->addr;
                if (header->msg_iovlen >= 2)
                {
                    header->msg_iovlen = (nuint)faults.Next(1, (int)header->msg_iovlen);
                    faults.Plan.Count("short send");
                }
                else if (header->msg_iov->iov_len >= 2)
                {
                    header->msg_iov->iov_len = (nuint)faults.Next(1, (int)Math.Min(header->msg_iov->iov_len, int.MaxValue));
                    faults.Plan.Count("short send");
                }
            }

            return;
        }

        if (kind == OperationKind.Receive && _bufferRing is not null && sqe->opcode == IORING_OP_RECV)
        {
            if (faults.Next(0, 4) != 0)
            {
                if (!faults.Plan.Allows("receive-enobufs"))
                {
                    return;
                }

                // Every buffer in use when data arrived: the data waits in the socket, the receive is retried.
                faults.Plan.Count("receive ENOBUFS");
                InjectResult(sqe, -Errno.ENOBUFS);
            }
            else if (faults.Plan.Allows("receive-ecanceled"))
            {
                Fault(connection, "receive ECANCELED");
                InjectResult(sqe, -Errno.ECANCELED);
            }
        }
    }

    /// <summary>Turns a filled SQE into a NOP that completes with <paramref name="result"/> under the same user data.</summary>
    private static void InjectResult(io_uring_sqe* sqe, int result)
    {
        ulong userData = sqe->user_data;
        *sqe = default;
        sqe->opcode = IORING_OP_NOP;
        sqe->op_flags = IORING_NOP_INJECT_RESULT;
        sqe->len = unchecked((uint)result);
        sqe->user_data = userData;
    }

    private void Fault(ProactorConnection connection, string fault) => _faults!.Plan.Fault(connection, fault);

    private static int PortOf(ProactorConnection connection) => ProactorFaultPlan.PortOf(connection);

    private static int PeerPort(int fd)
    {
        const int MaxAddress = 128;
        byte* buffer = stackalloc byte[MaxAddress];
        uint length = MaxAddress;
        if (Sys.getpeername(fd, buffer, &length) != 0 || length < 2)
        {
            return 0;
        }

        return (SocketAddressConverter.ToEndPoint(new ReadOnlySpan<byte>(buffer, (int)Math.Min(length, MaxAddress))) as IPEndPoint)?.Port ?? 0;
    }
}
