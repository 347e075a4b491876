using System.Buffers;
using System.Net;
using System.Net.Sockets;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using KestrelProactor.Dispatching;
using KestrelProactor.Internal;
using Microsoft.AspNetCore.Connections;
using static KestrelProactor.Interop.Linux.Interop;
using static KestrelProactor.Interop.Linux.Interop.IoUring;

namespace KestrelProactor.IoUring;

/// <summary>
/// The io_uring dispatcher: each pass of the loop runs queued work, then hands every SQE prepared since the
/// last pass to the kernel and waits for completions in a single <c>io_uring_enter</c>, then runs the
/// completion handlers. Handlers only prepare SQEs; they are submitted together on the next pass.
/// </summary>
internal sealed unsafe partial class IoUringDispatcher : ProactorDispatcher, IReceiveBufferLender
{
    private static readonly byte[] s_requiredOpcodes =
    [
        IORING_OP_ACCEPT, IORING_OP_RECV, IORING_OP_SEND, IORING_OP_SENDMSG, IORING_OP_SHUTDOWN,
        IORING_OP_CLOSE, IORING_OP_ASYNC_CANCEL, IORING_OP_READ, IORING_OP_NOP,
    ];

    private const ushort BufferGroupId = 1;

    private readonly Stack<IoUringSendBlock> _sendBlocks = new();
    private readonly List<ProactorConnection> _receiveRetries = new();
    private readonly System.Collections.Concurrent.ConcurrentQueue<ushort> _returnedBuffers = new();
    private volatile bool _receivesStarved;
    private volatile bool _tornDown;
    private int _returnedPending;
    private IoUringRing? _ring;
    private IoUringBufferRing? _bufferRing;
    private SafeFileDescriptorHandle? _wakeFd;
    private ulong* _wakeBuffer;
    private bool _multishotAccept;
    private bool _multishotReceive;
    private bool _zeroCopySend;

    public IoUringDispatcher(int id, ProactorBackendContext context) : base(id, context)
    {
    }

    public override string BackendName => "io_uring";

    public IoUringRing Ring => _ring ?? throw new InvalidOperationException("The ring is not set up.");

    /// <summary>Buffers the application holds: lent, minus those it gave back that wait for the next pass.</summary>
    public override long ReceiveBuffersLent => (_bufferRing?.Lent ?? 0) - Volatile.Read(ref _returnedPending);

    public override IReceiveBufferLender? ReceiveBufferLender => _bufferRing is not null ? this : null;

    public override int LendableBufferCount => _bufferRing?.Count ?? 0;

    Memory<byte> IReceiveBufferLender.GetMemory(int bufferId) => _bufferRing!.GetMemory((ushort)bufferId);

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
        // unless receives wait for buffers.
        Interlocked.Increment(ref _returnedPending);
        _returnedBuffers.Enqueue((ushort)bufferId);
        if (_receivesStarved)
        {
            Schedule(static _ => { }, null);
        }
    }

    private void DrainReturnedBuffers()
    {
        while (_returnedBuffers.TryDequeue(out ushort bufferId))
        {
            _bufferRing!.Return(bufferId);
            Interlocked.Decrement(ref _returnedPending);
        }
    }

    /// <summary>Setup flags the kernel refused and this ring runs without.</summary>
    public List<string> RefusedFeatures { get; } = new();

    /// <summary>Kernel features this ring uses, for the start-up log line.</summary>
    public List<string> FeaturesInUse { get; } = new();

    /// <summary>Completions the kernel dropped for lack of memory (should stay 0: NODROP holds them instead).</summary>
    public long CompletionQueueOverflows { get; private set; }

    /// <summary>Passes that found completions held back by the kernel because the CQ was full (delivered on the next enter).</summary>
    public long CompletionQueueBacklogs { get; private set; }

    /// <summary>Enters that woke this ring's sleeping submission-polling thread (counted for tests).</summary>
    public long SubmissionThreadWakeups => _ring?.SubmissionThreadWakeups ?? 0;

    /// <summary>Completions for owners that no longer exist (should stay 0; counted for tests).</summary>
    public long StaleCompletions { get; private set; }

    protected override void Initialize()
    {
        ProactorTransportOptions options = Options;
        uint sqEntries = (uint)options.SubmissionQueueSize;
        uint cqEntries = options.CompletionQueueSize != 0 ? (uint)options.CompletionQueueSize : Math.Max(sqEntries * 16, 4096);
        if (options.SubmissionQueuePolling)
        {
            // The polling thread runs the ring's kernel work itself, so DEFER_TASKRUN (which the kernel refuses beside
            // SQPOLL) is not asked for; with SINGLE_ISSUER the polling thread is the one issuer.
            // Dropped in this order when the kernel says EINVAL, SQPOLL last.
            var refused = new List<string>();
            try
            {
                _ring = IoUringRing.Create(
                    sqEntries,
                    cqEntries,
                    [IORING_SETUP_SINGLE_ISSUER, IORING_SETUP_SUBMIT_ALL, IORING_SETUP_SQPOLL],
                    refused,
                    (uint)options.SubmissionQueuePollingIdle.TotalMilliseconds);
            }
            catch (IoUringException)
            {
                // Refused for another reason than EINVAL: the usual ring below may still be allowed.
            }

            if (_ring?.PollsSubmissions == true)
            {
                RefusedFeatures.AddRange(refused);
            }
            else
            {
                // Without the polling thread this ring would also lack DEFER_TASKRUN: make the usual one instead.
                _ring?.Dispose();
                _ring = null;
                RefusedFeatures.Add("SQPOLL");
            }
        }

        _ring ??= IoUringRing.Create(
            sqEntries,
            cqEntries,
            [
                // Dropped in this order when the kernel says EINVAL: newest first. COOP_TASKRUN adds nothing beside
                // DEFER_TASKRUN, but a 5.19-6.0 kernel, which refuses DEFER_TASKRUN, keeps it.
                IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
                IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG,
                IORING_SETUP_SUBMIT_ALL,
            ],
            RefusedFeatures);
        try
        {
            InitializeRing(options);
        }
        catch
        {
            ReleaseResources();
            throw;
        }
    }

    private void InitializeRing(ProactorTransportOptions options)
    {
        IoUringRing ring = _ring!;
        if ((ring.Features & IORING_FEAT_FAST_POLL) == 0 || (ring.Features & IORING_FEAT_NODROP) == 0)
        {
            throw new IoUringException("the kernel's io_uring lacks FAST_POLL or NODROP (Linux 5.7 or later is required)", Errno.ENOSYS);
        }

        bool[] supported = ring.ProbeOpcodes();
        var missing = s_requiredOpcodes.Where(op => !supported[op]).Select(op => "opcode " + op).ToArray();
        if (missing.Length > 0)
        {
            throw new IoUringException($"the kernel's io_uring lacks required operations ({string.Join(", ", missing)}; Linux 5.11 or later is required)", Errno.ENOSYS);
        }

        FeaturesInUse.Add($"sq={ring.SqEntries}");
        FeaturesInUse.Add($"cq={ring.CqEntries}");
        if ((ring.Flags & IORING_SETUP_DEFER_TASKRUN) != 0)
        {
            FeaturesInUse.Add("SINGLE_ISSUER|DEFER_TASKRUN");
        }

        if ((ring.Flags & IORING_SETUP_TASKRUN_FLAG) != 0)
        {
            FeaturesInUse.Add((ring.Flags & IORING_SETUP_COOP_TASKRUN) != 0 ? "COOP_TASKRUN|TASKRUN_FLAG" : "TASKRUN_FLAG");
        }

        if (ring.PollsSubmissions)
        {
            FeaturesInUse.Add($"SQPOLL(idle={(int)options.SubmissionQueuePollingIdle.TotalMilliseconds}ms)");
        }

        if ((ring.Flags & IORING_SETUP_SUBMIT_ALL) != 0)
        {
            FeaturesInUse.Add("SUBMIT_ALL");
        }

        if (ring.IsRestricted)
        {
            FeaturesInUse.Add($"restricted({ring.RestrictedOperationCount} opcodes)");
        }
        else
        {
            RefusedFeatures.Add($"RESTRICTIONS ({ring.RestrictionsRefused})");
        }

        if (ring.TryRegisterRingFd())
        {
            FeaturesInUse.Add("registered-ring-fd");
        }
        else
        {
            RefusedFeatures.Add("registered-ring-fd");
        }

        int bufferErrno = 0;
        _bufferRing = options.DisableBufferRing
            ? null
            : IoUringBufferRing.TryCreate(ring, BufferGroupId, options.ReceiveBufferCount, options.ReceiveBufferSize, out bufferErrno);
        if (_bufferRing is not null)
        {
            FeaturesInUse.Add($"buffer-ring={options.ReceiveBufferCount}x{options.ReceiveBufferSize}");
        }
        else
        {
            RefusedFeatures.Add(options.DisableBufferRing ? "PBUF_RING (disabled by option)" : $"PBUF_RING ({Errno.Name(bufferErrno)})");
        }

        // Multishot accept came with 5.19, as did buffer rings: their presence tells the tier.
        _multishotAccept = !options.DisableMultishot && _bufferRing is not null;
        if (_multishotAccept)
        {
            FeaturesInUse.Add("multishot-accept");
        }

        // Multishot receive needs 6.0 and a buffer ring; nothing in the probe tells it, the version does.
        _multishotReceive = !options.DisableMultishot && _bufferRing is not null && KernelVersion.AtLeast(6, 0);
        if (_multishotReceive)
        {
            FeaturesInUse.Add("multishot-recv");
        }

        _zeroCopySend = options.ZeroCopySendThreshold > 0 && supported[IORING_OP_SEND_ZC] && supported[IORING_OP_SENDMSG_ZC];
        if (_zeroCopySend)
        {
            FeaturesInUse.Add($"send-zc>={options.ZeroCopySendThreshold}");
        }
        else if (options.ZeroCopySendThreshold > 0)
        {
            RefusedFeatures.Add("SEND_ZC (not supported by this kernel)");
        }

        int wakeFd = Sys.eventfd(0, Sys.EFD_CLOEXEC);
        if (wakeFd < 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            throw new IoUringException($"eventfd failed: {Errno.Name(errno)}", errno);
        }

        _wakeFd = new SafeFileDescriptorHandle(wakeFd);
        foreach (string feature in RefusedFeatures)
        {
            ProactorLog.RingFeatureRefused(Logger, Id, feature);
        }

        _wakeBuffer = (ulong*)NativeMemory.AllocZeroed(sizeof(ulong));
        ArmWakeRead();
        Context.Metrics.Register(this);
    }

    // ---- the loop ----

    protected override bool SupportsShortWaits => _ring?.SupportsTimedWait == true;

    protected override void PollCompletions(bool wait, long waitNanoseconds)
    {
        IoUringRing ring = _ring!;
        if (_bufferRing is not null)
        {
            DrainReturnedBuffers();
            RetryStarvedReceives();
            _bufferRing.Publish();
        }

        // With nothing to submit, nothing to wait for and no deferred kernel work, skip the system call. Without a
        // polling thread, an empty CQ also takes an enter: deferred completions are only posted by one. With it,
        // submissions need an enter only to wake it, and completions arrive without one.
        if (wait || ring.NeedsEnter || ring.SubmissionsNeedEnter || (!ring.PollsSubmissions && ring.ReadyCompletions == 0))
        {
            uint pending = ring.PendingSubmissions;
            int result = ring.SubmitAndWait(wait && ring.ReadyCompletions == 0 ? 1u : 0u, waitNanoseconds);
            if (result >= 0)
            {
                // With a polling thread the enter submits nothing itself (the kernel echoes the count back).
                if (pending != 0 && !ring.PollsSubmissions)
                {
                    Context.Metrics.SubmissionsPerEnter.Record(result);
                }
            }
            else if (result != -Errno.EBUSY && result != -Errno.EAGAIN && result != -Errno.EINTR && result != -Errno.ETIME)
            {
                throw new IoUringException($"io_uring_enter failed: {Errno.Name(-result)}", -result);
            }

            // EBUSY/EAGAIN: the kernel holds completions we have not read yet. Reading them below frees it.
            // ETIME: a bounded wait (a deferred output read) ran out.
        }

        if (ring.HasOverflowBacklog)
        {
            // The CQ was full: the kernel keeps the rest and posts them at the next enter, which NeedsEnter
            // forces as soon as this pass has made room.
            CompletionQueueBacklogs++;
            Context.Metrics.CompletionQueueOverflows.Add(1);
        }

        uint overflow = ring.TakeOverflowDelta();
        if (overflow != 0)
        {
            CompletionQueueOverflows += overflow;
            ProactorLog.CompletionQueueOverflow(Logger, Id, overflow);
        }

        int handled = 0;
        while (ring.TryPeekCompletion(0, out io_uring_cqe cqe))
        {
            // Release the slot first: the handler's copy is all it needs, and the kernel can reuse the slot.
            ring.AdvanceCompletions(1);
            handled++;
            HandleCompletion(cqe);
        }

        if (handled != 0)
        {
            Context.Metrics.CompletionsPerWake.Record(handled);
        }
    }

    private void HandleCompletion(in io_uring_cqe cqe)
    {
        ulong userData = cqe.user_data;
        OperationKind kind = OperationToken.KindOf(userData);
        if (kind == OperationKind.Wake)
        {
            ArmWakeRead();
            return;
        }

        bool more = (cqe.flags & IORING_CQE_F_MORE) != 0;
        IOperationOwner? owner = Table.OnCompleted(userData, final: !more);
        if (owner is null)
        {
            StaleCompletions++;
            ProactorLog.StaleCompletion(Logger, userData);
            if ((cqe.flags & IORING_CQE_F_BUFFER) != 0)
            {
                _bufferRing?.Return((ushort)(cqe.flags >> IORING_CQE_BUFFER_SHIFT));
            }

            if (kind == OperationKind.Accept && cqe.res >= 0)
            {
                Sys.close(cqe.res);
            }

            return;
        }

        switch (kind)
        {
            case OperationKind.Receive:
                OnReceiveCompletion(owner, cqe);
                break;
            case OperationKind.Send:
                OnSendCompletion((ProactorConnection)owner, cqe, more);
                break;
            case OperationKind.Accept:
                DispatchCompletion(owner, kind, ToResult(cqe.res), more, default, cqe.res >= 0 ? new SafeFileDescriptorHandle(cqe.res) : null);
                break;
            default:
                DispatchCompletion(owner, kind, ToResult(cqe.res), more, default, null);
                break;
        }
    }

    private void OnSendCompletion(ProactorConnection connection, in io_uring_cqe cqe, bool more)
    {
        var block = (IoUringSendBlock?)connection.SendState;
        int res = cqe.res;
        if (more && block is not null)
        {
            // A zero-copy send's result; the memory stays in use until the notification that follows.
            block.PendingZeroCopyResult = res;
            return;
        }

        if ((cqe.flags & IORING_CQE_F_NOTIF) != 0)
        {
            // The notification: now the pipe's memory may go back. Report the result the first CQE carried.
            res = block?.PendingZeroCopyResult ?? 0;
        }

        ReturnSendBlock(connection);
        DispatchCompletion(connection, OperationKind.Send, ToResult(res), more: false, default, null);
    }

    private void OnReceiveCompletion(IOperationOwner owner, in io_uring_cqe cqe)
    {
        var connection = (ProactorConnection)owner;
        bool more = (cqe.flags & IORING_CQE_F_MORE) != 0;
        if (cqe.res == -Errno.ENOBUFS && (cqe.flags & IORING_CQE_F_MORE) == 0)
        {
            // Every buffer of the ring was in use when data arrived. Nothing was lost: the data waits in the
            // socket. Retry once this pass has returned buffers.
            Context.Metrics.NoBufferCount.Add(1);
            _bufferRing?.OnExhausted();
            _receiveRetries.Add(connection);
            _receivesStarved = true;
            Table.OnSubmitted(connection.Token); // still counted as in flight until resubmitted
            return;
        }

        if ((cqe.flags & IORING_CQE_F_BUFFER) != 0)
        {
            ushort bufferId = (ushort)(cqe.flags >> IORING_CQE_BUFFER_SHIFT);
            bool lent = false;
            try
            {
                ReadOnlySpan<byte> data = _bufferRing!.GetData(bufferId, Math.Max(cqe.res, 0));
                lent = DispatchCompletion(owner, OperationKind.Receive, ToResult(cqe.res), more, data, null, bufferId);
            }
            finally
            {
                if (!lent)
                {
                    _bufferRing!.Return(bufferId);
                }
            }

            return;
        }

        DispatchCompletion(owner, OperationKind.Receive, ToResult(cqe.res), more, default, null);
    }

    private void RetryStarvedReceives()
    {
        if (_receiveRetries.Count == 0)
        {
            return;
        }

        foreach (ProactorConnection connection in _receiveRetries)
        {
            // The placeholder count taken at -ENOBUFS is handed to the new submission.
            Table.OnCompleted(connection.Token.ToUserData(OperationKind.Receive), final: true);
            if (connection.IsClosing || connection.IsReceivePaused)
            {
                // Closing, or paused for back-pressure while it waited for buffers: end the receive as
                // cancelled; the close goes on, or the resume re-arms.
                DispatchCompletion(connection, OperationKind.Receive, ToResult(-Errno.ECANCELED), more: false, default, null);
            }
            else
            {
                SubmitReceive(connection);
            }
        }

        _receiveRetries.Clear();
        _receivesStarved = false;
    }

    protected override void Wake()
    {
        SafeFileDescriptorHandle? wakeFd = _wakeFd;
        if (wakeFd is null || wakeFd.IsClosed)
        {
            return;
        }

        ulong one = 1;
        bool added = false;
        try
        {
            wakeFd.DangerousAddRef(ref added);
            Sys.write(wakeFd.Fd, &one, sizeof(ulong));
        }
        catch (ObjectDisposedException)
        {
            // The dispatcher is gone; nothing to wake.
        }
        finally
        {
            if (added)
            {
                wakeFd.DangerousRelease();
            }
        }
    }

    /// <summary>
    /// With DEFER_TASKRUN (6.1 and later), the work that finishes this ring's socket operations (copying received
    /// bytes into our memory) runs only when this thread enters the ring; once the ring is closed, what is left is
    /// cancelled instead of run. Other rings run that work at any return of this thread from the kernel (up to 6.0
    /// even after the ring is closed) or on a polling thread, so their memory in use is kept instead.
    /// </summary>
    protected override bool TeardownEndsKernelAccess => _ring is { } ring && (ring.Flags & IORING_SETUP_DEFER_TASKRUN) != 0;

    protected override void Teardown()
    {
        Context.Metrics.Unregister(this);
        ReleaseResources();
    }

    private void ReleaseResources()
    {
        _tornDown = true;
        if (_bufferRing is not null)
        {
            DrainReturnedBuffers();
            // Buffers still lent belong to input pipes an application may yet read: never unmap them.
            _bufferRing.Dispose(leaveBuffersMapped: _bufferRing.Lent > 0);
        }

        _ring?.Dispose();
        _wakeFd?.Dispose();
        if (_wakeBuffer is not null)
        {
            NativeMemory.Free(_wakeBuffer);
            _wakeBuffer = null;
        }

        while (_sendBlocks.TryPop(out IoUringSendBlock? block))
        {
            block.Dispose();
        }
    }

    // ---- preparing operations ----

    /// <summary>
    /// The next SQE. When the SQ is full, what it holds is submitted first (without waiting), so a burst of
    /// work larger than the ring still goes out in order.
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

        return sqe is not null ? sqe : throw new IoUringException("the submission queue stayed full", Errno.EBUSY);
    }

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
        io_uring_sqe* sqe = NextSqe();
        sqe->opcode = IORING_OP_NOP;
        Track(sqe, owner, OperationKind.Nop);
    }

    private void Track(io_uring_sqe* sqe, IOperationOwner owner, OperationKind kind)
    {
        sqe->user_data = owner.Token.ToUserData(kind);
        Table.OnSubmitted(owner.Token);
    }

    private static int FdOf(SafeHandle handle) => (int)handle.DangerousGetHandle();

    public override void SubmitAccept(ProactorConnectionListener listener)
    {
        io_uring_sqe* sqe = NextSqe();
        sqe->opcode = IORING_OP_ACCEPT;
        sqe->fd = FdOf(listener.ListenHandle);
        sqe->op_flags = Sys.SOCK_CLOEXEC;
        if (_multishotAccept && listener.UseMultishot)
        {
            sqe->ioprio = IORING_ACCEPT_MULTISHOT;
        }

        Track(sqe, listener, OperationKind.Accept);
    }

    public override void SubmitReceive(ProactorConnection connection)
    {
        io_uring_sqe* sqe = NextSqe();
        sqe->opcode = IORING_OP_RECV;
        sqe->fd = FdOf(connection.Socket);
        if (_bufferRing is not null)
        {
            // The kernel picks a buffer only when data has arrived (len 0: the buffer's size).
            sqe->flags = IOSQE_BUFFER_SELECT;
            sqe->buf_index = _bufferRing.GroupId;
            if (_multishotReceive)
            {
                // Stays armed: one completion per arrival, each with a buffer, until cancelled or the peer ends.
                sqe->ioprio = IORING_RECV_MULTISHOT;
            }
        }
        else
        {
            Memory<byte> memory = connection.RentReceiveMemory(Options.ReceiveBufferSize);
            // Pinned by RentReceiveMemory until the completion.
            sqe->addr = (ulong)Unsafe.AsPointer(ref MemoryMarshal.GetReference(memory.Span));
            sqe->len = (uint)memory.Length;
        }

        Track(sqe, connection, OperationKind.Receive);
    }

    protected override void SubmitSend(ProactorConnection connection, in ReadOnlySequence<byte> buffer)
    {
        if (!_sendBlocks.TryPop(out IoUringSendBlock? block))
        {
            block = new IoUringSendBlock();
        }

        int segments = block.Prepare(buffer, out void* firstAddress, out int firstLength);
        connection.SendState = block;
        io_uring_sqe* sqe = NextSqe();
        sqe->fd = FdOf(connection.Socket);
        sqe->op_flags = Sys.MSG_NOSIGNAL;
        bool zeroCopy = _zeroCopySend && block.Length >= Options.ZeroCopySendThreshold;
        block.ZeroCopy = zeroCopy;
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

        Track(sqe, connection, OperationKind.Send);
    }

    private void ReturnSendBlock(ProactorConnection connection)
    {
        if (connection.SendState is IoUringSendBlock block)
        {
            connection.SendState = null;
            block.Release();
            _sendBlocks.Push(block);
        }
    }

    public override void SubmitShutdownWrite(ProactorConnection connection)
    {
        io_uring_sqe* sqe = NextSqe();
        sqe->opcode = IORING_OP_SHUTDOWN;
        sqe->fd = FdOf(connection.Socket);
        sqe->len = Sys.SHUT_WR;
        Track(sqe, connection, OperationKind.Shutdown);
    }

    public override void SubmitCancel(IOperationOwner owner, OperationKind kind)
    {
        io_uring_sqe* sqe = NextSqe();
        sqe->opcode = IORING_OP_ASYNC_CANCEL;
        sqe->addr = owner.Token.ToUserData(kind);
        sqe->fd = -1;
        Track(sqe, owner, OperationKind.Cancel);
    }

    public override void SubmitClose(ProactorConnection connection)
    {
        int fd = FdOf(connection.Socket);
        // From here the close operation owns the descriptor; the handle must not close it again.
        connection.Socket.SetHandleAsInvalid();
        io_uring_sqe* sqe = NextSqe();
        sqe->opcode = IORING_OP_CLOSE;
        sqe->fd = fd;
        Track(sqe, connection, OperationKind.Close);
    }

    public override void SetAbortiveClose(ProactorConnection connection)
    {
        Sys.linger linger = new() { l_onoff = 1, l_linger = 0 };
        Sys.setsockopt(FdOf(connection.Socket), Sys.SOL_SOCKET, Sys.SO_LINGER, &linger, (uint)sizeof(Sys.linger));
    }

    public override void ConfigureAcceptedSocket(SafeHandle socket, bool noDelay)
    {
        if (noDelay)
        {
            int one = 1;
            Sys.setsockopt(FdOf(socket), Sys.IPPROTO_TCP, Sys.TCP_NODELAY, &one, sizeof(int));
        }
    }

    public override bool TryGetEndPoint(SafeHandle socket, bool local, out EndPoint? endPoint)
    {
        const int MaxAddress = 128;
        byte* buffer = stackalloc byte[MaxAddress];
        uint length = MaxAddress;
        int fd = FdOf(socket);
        int result = local ? Sys.getsockname(fd, buffer, &length) : Sys.getpeername(fd, buffer, &length);
        if (result != 0 || length < 2)
        {
            endPoint = null;
            return false;
        }

        endPoint = SocketAddressConverter.ToEndPoint(new ReadOnlySpan<byte>(buffer, (int)Math.Min(length, MaxAddress)));
        return true;
    }

    private static IoResult ToResult(int res)
        => res >= 0 ? IoResult.Success(res) : IoResult.Failure(Errno.ToSocketError(-res), -res, Errno.Name(-res));
}
