using System.Buffers;
using KestrelProactor.Dispatching;
using KestrelProactor.Internal;
using static KestrelProactor.Interop.Linux.Interop;
using static KestrelProactor.Interop.Linux.Interop.IoUring;

namespace KestrelProactor.IoUring;

/// <summary>
/// Sending: one send in flight per connection, gathered from what the application flushed.
/// <para>
/// A zero-copy send completes in two steps: its result (with <c>IORING_CQE_F_MORE</c>), once the kernel has
/// queued the bytes, and later its notification (<c>IORING_CQE_F_NOTIF</c>), once the kernel no longer reads the
/// pages: the peer acknowledged them, or the socket's queued data was freed (an abortive close frees it at once).
/// The connection is told the result at once and goes on with its next send or its close; only the memory waits
/// for the notification. The send's block keeps its pins, and holds on the output pipe's pool blocks
/// (<see cref="IoUringZeroCopyPool"/>), so neither goes back to a pool the application writes into before the
/// kernel is done with it. Such a send's user data names its block rather than its connection, since the
/// notification may come after the connection has left the operation table.
/// </para>
/// <para>
/// A send that ends with EAGAIN sent nothing and goes out again, unseen by the connection: on a non-blocking socket
/// (accepted sockets are, as the socket transport's) the kernel's worker thread, which a send is handed to when its
/// wait for room was woken for nothing, sends without waiting (<c>sendmsg</c> honours O_NONBLOCK) and fails so.
/// </para>
/// </summary>
internal sealed unsafe partial class IoUringDispatcher
{
    // A zero-copy send's user data: this bit, its block's index in bits 32-62, its kind in the low byte.
    private const ulong ZeroCopyTag = 1UL << 63;

    private readonly Stack<IoUringSendBlock> _sendBlocks = new();
    private readonly List<IoUringSendBlock> _allSendBlocks = new();
    private IoUringZeroCopyPool? _zeroCopyPool;

    // Set once a socket that is not TCP refused zero-copy: later ones are not asked.
    private bool _nonTcpRefusesZeroCopy;

    /// <summary>With zero-copy sends, the output pipes' pool holds blocks a send still needs (see the class remarks).</summary>
    public override MemoryPool<byte> OutputMemoryPool => _zeroCopyPool ?? MemoryPool;

    /// <summary>Zero-copy sends whose result arrived and whose notification has not (read racily by tests).</summary>
    public int ZeroCopySendsAwaitingNotification { get; private set; }

    /// <summary>Bytes of pool memory those sends hold (read racily by tests).</summary>
    public long ZeroCopyBytesAwaitingNotification { get; private set; }

    /// <summary>Zero-copy sends still awaiting their notification when the ring closed, kept for good (for tests).</summary>
    public int ZeroCopySendsKeptAtTeardown { get; private set; }

    /// <summary>Send blocks not idle when the ring closed: awaiting a notification, or of a send never completed (for tests).</summary>
    public int SendBlocksOutAtTeardown { get; private set; }

    /// <summary>Send blocks found twice on the idle stack at the teardown (should stay 0; for tests).</summary>
    public int SendBlocksRecycledTwice { get; private set; }

    /// <summary>Zero-copy sends the socket refused and that were sent again, copied (for tests).</summary>
    public long ZeroCopyFallbacks { get; private set; }

    /// <summary>Sends that ended with EAGAIN, having sent nothing, and went out again (for tests).</summary>
    public long SendsRetriedAfterWouldBlock { get; private set; }

    /// <summary>
    /// A test hook: runs for every send about to be submitted. When it returns true the send becomes a NOP that
    /// completes with -EAGAIN (<c>IORING_NOP_INJECT_RESULT</c>, 6.10+), as a send the kernel's worker thread tried
    /// on a non-blocking socket does: nothing sent.
    /// </summary>
    internal static Func<ProactorConnection, bool>? TestSendWouldBlock { get; set; }

    protected override void SubmitSend(ProactorConnection connection, in ReadOnlySequence<byte> buffer)
        => SubmitSend(connection, buffer, allowZeroCopy: true);

    private void SubmitSend(ProactorConnection connection, in ReadOnlySequence<byte> buffer, bool allowZeroCopy)
    {
        IoUringSendBlock block = RentSendBlock();
        int segments;
        void* firstAddress;
        int firstLength;
        bool zeroCopy;
        io_uring_sqe* sqe;
        try
        {
            segments = block.Prepare(buffer, out firstAddress, out firstLength);
            zeroCopy = allowZeroCopy && WantsZeroCopy(connection, block.Length) && block.TryHoldForZeroCopy();
            sqe = TakeSqe(connection, OperationKind.Send);
        }
        catch
        {
            RecycleSendBlock(block);
            throw;
        }

        sqe->fd = FdOf(connection.Socket);
        sqe->op_flags = Sys.MSG_NOSIGNAL;
        if (segments == 1)
        {
            sqe->opcode = zeroCopy ? IORING_OP_SEND_ZC : IORING_OP_SEND;
            sqe->addr = (ulong)firstAddress;
            sqe->len = (uint)firstLength;
        }
        else
        {
            sqe->opcode = zeroCopy ? IORING_OP_SENDMSG_ZC : IORING_OP_SENDMSG;
            sqe->addr = (ulong)block.Header;
        }

        block.Connection = connection;
        block.OwnerUserData = connection.Token.ToUserData(OperationKind.Send);
        Track(sqe, connection, OperationKind.Send);
        if (zeroCopy)
        {
            // Counted in flight for the connection as any send; named by its block.
            sqe->user_data = ZeroCopyUserData(block);
            if (_faults is not null && sqe->opcode == IORING_OP_NOP)
            {
                // The fault layer made it a NOP that fails it: its result is given the kernel's flags at completion.
                _faults.NoteZeroCopyNop(sqe->user_data);
            }
        }

        connection.SendState = block;
        if (TestSendWouldBlock?.Invoke(connection) == true)
        {
            ulong userData = sqe->user_data;
            *sqe = default;
            sqe->opcode = IORING_OP_NOP;
            sqe->op_flags = IORING_NOP_INJECT_RESULT;
            sqe->len = unchecked((uint)-Errno.EAGAIN);
            sqe->user_data = userData;
        }
    }

    private bool WantsZeroCopy(ProactorConnection connection, long length)
        => _zeroCopySend
           && length >= Options.ZeroCopySendThreshold
           && (connection.IsTcp || !_nonTcpRefusesZeroCopy)
           && connection.BackendState is not IoUringConnectionState { ZeroCopyRefused: true };

    private static ulong ZeroCopyUserData(IoUringSendBlock block)
        => ZeroCopyTag | ((ulong)(uint)block.Index << 32) | (byte)OperationKind.Send;

    private IoUringSendBlock RentSendBlock()
    {
        if (!_sendBlocks.TryPop(out IoUringSendBlock? block))
        {
            block = new IoUringSendBlock(_allSendBlocks.Count);
            _allSendBlocks.Add(block);
        }

        return block;
    }

    private void RecycleSendBlock(IoUringSendBlock block)
    {
        block.Release();
        _sendBlocks.Push(block);
    }

    /// <summary>A copied send completed: its memory is free, and the connection learns the result.</summary>
    private void OnSendCompletion(ProactorConnection connection, in io_uring_cqe cqe)
    {
        int res = cqe.res;
        if (connection.SendState is IoUringSendBlock block)
        {
            connection.SendState = null;
            bool resent = res == -Errno.EAGAIN && TrySendAgain(connection, block.Buffer, allowZeroCopy: false, ref res);
            RecycleSendBlock(block);
            if (resent)
            {
                return;
            }
        }

        DispatchCompletion(connection, OperationKind.Send, ToResult(res), more: false, default, null);
    }

    /// <summary>
    /// Sends <paramref name="buffer"/> again after a send that sent none of it (EAGAIN, or a refused zero-copy), unseen
    /// by the connection. Not once it is closing: the close's cancel was aimed at the first send and would miss this
    /// one, so the send ends as cancelled (<paramref name="res"/>) instead.
    /// </summary>
    private bool TrySendAgain(ProactorConnection connection, in ReadOnlySequence<byte> buffer, bool allowZeroCopy, ref int res)
    {
        if (connection.IsClosing)
        {
            res = -Errno.ECANCELED;
            return false;
        }

        if (res == -Errno.EAGAIN)
        {
            SendsRetriedAfterWouldBlock++;
        }

        try
        {
            SubmitSend(connection, buffer, allowZeroCopy);
        }
        catch (Exception ex)
        {
            // As a throw in the send's handler: this connection pays, and its close does not wait for it.
            OnHandlerFault(connection, OperationKind.Send, operationEnded: true, ex);
            connection.AdvanceClose();
        }

        return true;
    }

    private void OnZeroCopySendCompletion(in io_uring_cqe cqe)
    {
        IoUringSendBlock block = ZeroCopyBlockOf(cqe.user_data);
        if ((cqe.flags & IORING_CQE_F_NOTIF) != 0)
        {
            OnZeroCopyNotification(block);
            return;
        }

        // The result. The send is over for the connection; a notification follows when F_MORE says so (from 6.0 on,
        // a send that fails once the kernel prepared it has one too; one refused earlier has none).
        ProactorConnection connection = block.Connection!;
        ReadOnlySequence<byte> buffer = block.Buffer;
        IOperationOwner? owner = EndZeroCopySend(block, cqe.flags);
        if (owner is null)
        {
            StaleCompletions++;
            ProactorLog.StaleCompletion(Logger, cqe.user_data);
            return;
        }

        int res = cqe.res;
        if (res == -Errno.EOPNOTSUPP)
        {
            // The socket has no zero-copy (a Unix domain socket, say). Nothing was sent: the same bytes go again,
            // copied, and this socket (and other non-TCP ones) copy from now on.
            ZeroCopyFallbacks++;
            StateOf(connection).ZeroCopyRefused = true;
            _nonTcpRefusesZeroCopy |= !connection.IsTcp;
            if (TrySendAgain(connection, buffer, allowZeroCopy: false, ref res))
            {
                return;
            }
        }
        else if (res == -Errno.EAGAIN && TrySendAgain(connection, buffer, allowZeroCopy: true, ref res))
        {
            return;
        }

        DispatchCompletion(connection, OperationKind.Send, ToResult(res), more: false, default, null);
    }

    private IoUringSendBlock ZeroCopyBlockOf(ulong userData) => _allSendBlocks[(int)((userData & ~ZeroCopyTag) >> 32)];

    /// <summary>
    /// A zero-copy send's notification: the kernel let go of the pages, so the pins and holds go, and the pool blocks
    /// with them if the pipe is done. The result comes first; should a kernel post them the other way round, the
    /// result recycles.
    /// </summary>
    private void OnZeroCopyNotification(IoUringSendBlock block)
    {
        block.NotificationArrived = true;
        if (block.ResultArrived)
        {
            ZeroCopySendsAwaitingNotification--;
            ZeroCopyBytesAwaitingNotification -= block.Length;
            RecycleSendBlock(block);
        }
    }

    /// <summary>
    /// A zero-copy send's result, booked: the send leaves its connection and the table, and its block waits for the
    /// notification (<paramref name="flags"/> has F_MORE) or goes back at once. Returns the owner the table had.
    /// </summary>
    private IOperationOwner? EndZeroCopySend(IoUringSendBlock block, uint flags)
    {
        IOperationOwner? owner = Table.OnCompleted(block.OwnerUserData, final: true);
        if (block.Connection is { } connection && ReferenceEquals(connection.SendState, block))
        {
            connection.SendState = null;
        }

        block.ResultArrived = true;
        if ((flags & IORING_CQE_F_MORE) != 0 && !block.NotificationArrived)
        {
            ZeroCopySendsAwaitingNotification++;
            ZeroCopyBytesAwaitingNotification += block.Length;
        }
        else
        {
            RecycleSendBlock(block);
        }

        return owner;
    }
}
