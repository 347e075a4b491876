using System.Net;
using System.Runtime.InteropServices;
using KestrelProactor.Dispatching;
using KestrelProactor.Internal;
using static KestrelProactor.Interop.Linux.Interop;
using static KestrelProactor.Interop.Linux.Interop.IoUring;

namespace KestrelProactor.IoUring;

/// <summary>Preparing SQEs: taking one, filling it, and counting it in flight for its owner.</summary>
internal sealed unsafe partial class IoUringDispatcher
{
    /// <summary>
    /// The user data every SQE carries from the moment it is taken until its owner's is written: no owner, no
    /// kind, no zero-copy send can have it (slots are below 2^31, a zero-copy send's low bits are its kind), so a
    /// SQE whose preparation threw goes out as a NOP whose completion nobody claims. With 0, the zeroed entry's
    /// value, it named slot 0 and generation 0 (usually a listener), whose in-flight count then dropped early.
    /// </summary>
    internal const ulong AbandonedUserData = ulong.MaxValue;

    /// <summary>
    /// A test hook: runs when an SQE has been taken for <c>owner</c>'s operation, before anything is written
    /// into it. A throw takes the path of a preparation that fails halfway (the SQE is abandoned).
    /// </summary>
    internal static Action<IOperationOwner, OperationKind>? TestSubmissionHook { get; set; }

    /// <summary>
    /// The next SQE, as a NOP that no owner claims until <see cref="Track"/> names it. When the SQ is full, what it
    /// holds is submitted first (without waiting), so a burst of work larger than the ring still goes out in order.
    /// Whatever can throw while preparing an operation happens before this call or before the first field is
    /// written, so an entry abandoned by a throw is still that NOP.
    /// </summary>
    private io_uring_sqe* NextSqe()
    {
        IoUringRing ring = _ring!;
        io_uring_sqe* sqe = ring.TryGetSqe();
        for (int attempt = 0; sqe is null && attempt < 100; attempt++)
        {
            int result = ring.SubmitAndWait(0);
            if (result < 0 && result != -Errno.EBUSY && result != -Errno.EAGAIN && result != -Errno.EINTR)
            {
                throw new IoUringException($"io_uring_enter failed while the submission queue was full: {Errno.Name(-result)}", -result);
            }

            sqe = ring.TryGetSqe();
            if (sqe is null)
            {
                Thread.Yield();
            }
        }

        if (sqe is null)
        {
            throw new IoUringException("the submission queue stayed full", Errno.EBUSY);
        }

        sqe->opcode = IORING_OP_NOP;
        sqe->user_data = AbandonedUserData;
        return sqe;
    }

    /// <summary>An SQE for one of <paramref name="owner"/>'s operations (see <see cref="NextSqe"/>).</summary>
    private io_uring_sqe* TakeSqe(IOperationOwner owner, OperationKind kind)
    {
        io_uring_sqe* sqe = NextSqe();
        TestSubmissionHook?.Invoke(owner, kind);
        return sqe;
    }

    /// <summary>Names the owner in a filled SQE and counts the operation in flight; the last step of preparing it.</summary>
    private void Track(io_uring_sqe* sqe, IOperationOwner owner, OperationKind kind)
    {
        sqe->user_data = owner.Token.ToUserData(kind);
        Table.OnSubmitted(owner.Token);
        if (_faults is not null)
        {
            InjectAtSubmission(sqe, owner, kind);
        }
    }

    private static int FdOf(SafeHandle handle) => (int)handle.DangerousGetHandle();

    private void ArmWakeRead()
    {
        io_uring_sqe* sqe = NextSqe();
        sqe->opcode = IORING_OP_READ;
        sqe->fd = _wakeFd!.Fd;
        sqe->addr = (ulong)_wakeBuffer;
        sqe->len = sizeof(ulong);
        sqe->off = ulong.MaxValue; // read at the current position (eventfds have none)
        sqe->user_data = (ulong)OperationKind.Wake;
    }

    /// <summary>A NOP round trip, for tests of the ring itself.</summary>
    internal void SubmitNop(IOperationOwner owner)
    {
        io_uring_sqe* sqe = TakeSqe(owner, OperationKind.Nop);
        sqe->opcode = IORING_OP_NOP;
        Track(sqe, owner, OperationKind.Nop);
    }

    public override void SubmitAccept(ProactorConnectionListener listener)
    {
        io_uring_sqe* sqe = TakeSqe(listener, OperationKind.Accept);
        sqe->opcode = IORING_OP_ACCEPT;
        sqe->fd = FdOf(listener.ListenHandle);
        // Non-blocking like the sockets of Kestrel's socket transport: io_uring never needs a blocking socket (it
        // waits for readiness itself), and an application that borrows the descriptor must not block on it.
        sqe->op_flags = Sys.SOCK_CLOEXEC | Sys.SOCK_NONBLOCK;
        if (_multishotAccept && listener.UseMultishot)
        {
            sqe->ioprio = IORING_ACCEPT_MULTISHOT;
        }

        Track(sqe, listener, OperationKind.Accept);
    }

    public override void SubmitShutdownWrite(ProactorConnection connection)
    {
        io_uring_sqe* sqe = TakeSqe(connection, OperationKind.Shutdown);
        sqe->opcode = IORING_OP_SHUTDOWN;
        sqe->fd = FdOf(connection.Socket);
        sqe->len = Sys.SHUT_WR;
        Track(sqe, connection, OperationKind.Shutdown);
    }

    public override void SubmitCancel(IOperationOwner owner, OperationKind kind)
    {
        io_uring_sqe* sqe = TakeSqe(owner, OperationKind.Cancel);
        sqe->opcode = IORING_OP_ASYNC_CANCEL;
        sqe->addr = owner is ProactorConnection connection ? CancelTarget(connection, kind) : owner.Token.ToUserData(kind);
        sqe->fd = -1;
        Track(sqe, owner, OperationKind.Cancel);
    }

    /// <summary>The user data of <paramref name="connection"/>'s operation of <paramref name="kind"/> in flight.</summary>
    private ulong CancelTarget(ProactorConnection connection, OperationKind kind)
    {
        if (kind == OperationKind.Send && connection.SendState is IoUringSendBlock { IsZeroCopy: true } block)
        {
            return ZeroCopyUserData(block);
        }

        if (kind == OperationKind.Receive && connection.BackendState is IoUringConnectionState { Polling: true } state)
        {
            // A poll that has already completed is beyond the cancel's reach: its completion must not go on to a receive.
            state.PollCancelled = true;
        }

        return connection.Token.ToUserData(kind);
    }

    public override void SubmitClose(ProactorConnection connection)
    {
        int fd = FdOf(connection.Socket);
        io_uring_sqe* sqe = TakeSqe(connection, OperationKind.Close);
        sqe->opcode = IORING_OP_CLOSE;
        sqe->fd = fd;
        Track(sqe, connection, OperationKind.Close);
        // From here the close operation owns the descriptor; the handle must not close it again. Not before the SQE
        // is prepared: a throw above leaves the descriptor with its handle, which still closes it.
        connection.Socket.SetHandleAsInvalid();
    }

    public override void SetAbortiveClose(ProactorConnection connection)
    {
        Sys.linger linger = new() { l_onoff = 1, l_linger = 0 };
        Sys.setsockopt(FdOf(connection.Socket), Sys.SOL_SOCKET, Sys.SO_LINGER, &linger, (uint)sizeof(Sys.linger));
    }

    public override void ConfigureAcceptedSocket(SafeHandle socket, bool noDelay)
    {
        if (!noDelay)
        {
            return;
        }

        // The number is used only while the handle is held: a closed handle throws here instead of having its
        // number, which another descriptor of the process may have taken, configured.
        bool added = false;
        try
        {
            socket.DangerousAddRef(ref added);
            int one = 1;
            Sys.setsockopt(FdOf(socket), Sys.IPPROTO_TCP, Sys.TCP_NODELAY, &one, sizeof(int));
        }
        finally
        {
            if (added)
            {
                socket.DangerousRelease();
            }
        }
    }

    public override bool TryGetEndPoint(SafeHandle socket, bool local, out EndPoint? endPoint)
    {
        const int MaxAddress = 128;
        byte* buffer = stackalloc byte[MaxAddress];
        uint length = MaxAddress;
        int fd = FdOf(socket);
        int result = local ? Sys.getsockname(fd, buffer, &length) : Sys.getpeername(fd, buffer, &length);
        if (result != 0 && !local)
        {
            // A peer that reset the connection while it waited in the backlog: getpeername says ENOTCONN, but the
            // address is still known (SO_PEERNAME asks as accept does), and the connection goes to the application
            // as with Kestrel's socket transport, whose accept reports that address.
            // The kernel wants a length no longer than the address: an IPv6 one (28 bytes), else an IPv4 one (16).
            const int SolSocket = 1;
            const int SoPeerName = 28;
            foreach (uint size in (ReadOnlySpan<uint>)[28, 16])
            {
                length = size;
                result = Sys.getsockopt(fd, SolSocket, SoPeerName, buffer, &length);
                if (result == 0)
                {
                    break;
                }
            }
        }

        if (result != 0 || length < 2)
        {
            endPoint = null;
            return false;
        }

        endPoint = SocketAddressConverter.ToEndPoint(new ReadOnlySpan<byte>(buffer, (int)Math.Min(length, MaxAddress)));
        return true;
    }
}
