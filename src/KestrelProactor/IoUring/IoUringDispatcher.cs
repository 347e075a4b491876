using KestrelProactor.Dispatching;
using KestrelProactor.Internal;
using static KestrelProactor.Interop.Linux.Interop;
using static KestrelProactor.Interop.Linux.Interop.IoUring;

namespace KestrelProactor.IoUring;

/// <summary>
/// The io_uring dispatcher: each pass of the loop runs queued work, then hands every SQE prepared since the
/// last pass to the kernel and waits for completions in a single <c>io_uring_enter</c>, then runs the
/// completion handlers. Handlers only prepare SQEs; they are submitted together on the next pass.
/// <para>
/// This file runs the pass and routes completions; setting the ring up and tearing it down is in
/// <c>IoUringDispatcher.Setup.cs</c>, preparing SQEs in <c>.Submissions.cs</c>, receiving (buffer ring, basic tier)
/// in <c>.Receive.cs</c>, sending (zero-copy included) in <c>.Send.cs</c>.
/// </para>
/// </summary>
internal sealed unsafe partial class IoUringDispatcher : ProactorDispatcher
{
    private static readonly byte[] s_requiredOpcodes =
    [
        IORING_OP_ACCEPT, IORING_OP_RECV, IORING_OP_SEND, IORING_OP_SENDMSG, IORING_OP_SHUTDOWN,
        IORING_OP_CLOSE, IORING_OP_ASYNC_CANCEL, IORING_OP_READ, IORING_OP_NOP, IORING_OP_POLL_ADD,
    ];

    private const ushort BufferGroupId = 1;

    private IoUringRing? _ring;
    private IoUringBufferRing? _bufferRing;
    private SafeFileDescriptorHandle? _wakeFd;
    private ulong* _wakeBuffer;
    private bool _multishotAccept;
    private bool _multishotReceive;
    private bool _zeroCopySend;
    private volatile bool _tornDown;

    public IoUringDispatcher(int id, ProactorBackendContext context) : base(id, context)
    {
        _faults = IoUringFaultPlan.Current?.CreateInjector(id);
    }

    public override string BackendName => "io_uring";

    public IoUringRing Ring => _ring ?? throw new InvalidOperationException("The ring is not set up.");

    /// <summary>Setup flags the kernel refused and this ring runs without.</summary>
    public List<string> RefusedFeatures { get; } = new();

    /// <summary>Kernel features this ring uses, for the start-up log line.</summary>
    public List<string> FeaturesInUse { get; } = new();

    /// <summary>
    /// Completions the kernel dropped: with NODROP it keeps what does not fit in the CQ and drops one only when it
    /// cannot allocate memory to keep it. Any drop stops this dispatcher (see <see cref="CheckDroppedCompletions"/>).
    /// </summary>
    public long CompletionQueueOverflows { get; private set; }

    /// <summary>Passes that found completions held back by the kernel because the CQ was full (delivered on the next enter).</summary>
    public long CompletionQueueBacklogs { get; private set; }

    // True from the pass that found the kernel holding completions back until a pass that found it holding none.
    private bool _inCompletionQueueBacklog;

    /// <summary>Enters that woke this ring's sleeping submission-polling thread (counted for tests).</summary>
    public long SubmissionThreadWakeups => _ring?.SubmissionThreadWakeups ?? 0;

    /// <summary>Completions for owners that no longer exist (should stay 0; counted for tests).</summary>
    public long StaleCompletions { get; private set; }

    /// <summary>Completions of SQEs taken and then abandoned when preparing them threw (they went out as NOPs).</summary>
    public long AbandonedSubmissions { get; private set; }

    // ---- the loop ----

    protected override bool SupportsShortWaits => _ring?.SupportsTimedWait == true;

    protected override bool CoalescesPoolWakeups => true;

    /// <inheritdoc />
    protected override bool SpinsAfterHandOff => true;

    /// <inheritdoc />
    protected override bool HasKernelWorkPending
        => _ring is { } ring
           && (ring.PendingSubmissions != 0 || ring.NeedsEnter || ring.ReadyCompletions != 0
               || _receiveRetries.Count != 0);

    protected override void PollCompletions(bool wait, long waitNanoseconds)
    {
        IoUringRing ring = _ring!;
        if (_faults is not null)
        {
            BeginPassWithFaults(ring);
        }

        // Before a wait that could last: a drop seen only after it would leave this pass's owners waiting meanwhile.
        CheckDroppedCompletions(ring);
        if (_bufferRing is not null)
        {
            DrainReturnedBuffers();
            _bufferRing.EnsureHeadroom();
            RetryStarvedReceives();
            _bufferRing.Publish();
            if (_receiveRetries.Count != 0 && _bufferRing.Available > 0)
            {
                // A receive ended in the round (cancelled while parked) and its handler queued a new one behind a
                // retry not yet answered: buffers are there for it, and nothing else might wake this pass.
                wait = false;
            }
        }

        // With nothing to submit, nothing to wait for and no deferred kernel work, skip the system call. Without a
        // polling thread, an empty CQ also takes an enter: deferred completions are only posted by one. With it,
        // submissions need an enter only to wake it, and completions arrive without one.
        if (wait || ring.NeedsEnter || ring.SubmissionsNeedEnter || (!ring.PollsSubmissions && ring.ReadyCompletions == 0))
        {
            uint pending = ring.PendingSubmissions;
            int result = _faults is null
                ? ring.SubmitAndWait(wait && ring.ReadyCompletions == 0 ? 1u : 0u, waitNanoseconds)
                : EnterWithFaults(ring, wait, waitNanoseconds);
            if (result >= 0)
            {
                // With a polling thread the enter submits nothing itself (the kernel echoes the count back).
                if (pending != 0 && !ring.PollsSubmissions)
                {
                    Context.Metrics.SubmissionsPerEnter.Record(result);
                }
            }
            else if (result == -Errno.EBADR)
            {
                // The kernel's own report of a dropped completion (5.19+), once, when the CQ is empty.
                throw DroppedCompletions(ring.TakeOverflowDelta());
            }
            else if (!IsTransientEnterResult(result))
            {
                throw new IoUringException($"io_uring_enter failed: {Errno.Name(-result)}", -result);
            }

            // EBUSY/EAGAIN: the kernel holds completions we have not read yet. Reading them below frees it.
            // ETIME: a bounded wait (a deferred output read) ran out.
        }

        if (ring.HasOverflowBacklog)
        {
            // The CQ was full: the kernel keeps the rest and posts them at the next enter, which NeedsEnter
            // forces as soon as this pass has made room. Logged once per episode, not once per pass.
            CompletionQueueBacklogs++;
            Context.Metrics.CompletionQueueOverflows.Add(1);
            if (!_inCompletionQueueBacklog)
            {
                _inCompletionQueueBacklog = true;
                ProactorLog.CompletionQueueOverflow(Logger, Id, ring.CqEntries);
            }
        }
        else
        {
            _inCompletionQueueBacklog = false;
        }

        CheckDroppedCompletions(ring);

        int handled = 0;
        if (_faults is not null)
        {
            DeliverHeld(all: false);
        }

        while (ring.TryPeekCompletion(0, out io_uring_cqe cqe))
        {
            // Release the slot first: the handler's copy is all it needs, and the kernel can reuse the slot.
            ring.AdvanceCompletions(1);
            handled++;
            if (_faults is null)
            {
                HandleCompletion(cqe);
            }
            else
            {
                HandleCompletionWithFaults(cqe);
            }
        }

        if (handled != 0)
        {
            Context.Metrics.CompletionsPerWake.Record(handled);
        }
    }

    /// <summary>
    /// The ring's count of dropped completions moved. A completion is dropped only when the CQ is full and the
    /// kernel cannot allocate memory to keep it (NODROP otherwise holds it back), and nothing says whose it was: an
    /// owner would wait for ever for an operation that is over (a connection's close, a listener's accept, this
    /// dispatcher's own wake-up read), and its in-flight count, which says when the kernel is done with its memory,
    /// can no longer be trusted. The one state from which every owner can be released safely is a ring torn down:
    /// the dispatcher stops as on any other ring error (logged, owners released). The kernel also reports a drop as
    /// EBADR from an enter; both signals take this path.
    /// </summary>
    private void CheckDroppedCompletions(IoUringRing ring)
    {
        uint dropped = ring.TakeOverflowDelta();
        if (dropped != 0)
        {
            throw DroppedCompletions(dropped);
        }
    }

    private IoUringException DroppedCompletions(uint count)
    {
        CompletionQueueOverflows += Math.Max(count, 1);
        string how = count == 0 ? "some completions" : $"{count} completion(s)";
        return new IoUringException(
            $"the kernel dropped {how} (completion queue full and no memory to hold them back); the operations they ended are unknown, so the ring is torn down and its connections released",
            Errno.EBADR);
    }

    private void HandleCompletion(in io_uring_cqe cqe)
    {
        ulong userData = cqe.user_data;
        if (userData == AbandonedUserData)
        {
            AbandonedSubmissions++;
            return;
        }

        if ((userData & ZeroCopyTag) != 0)
        {
            OnZeroCopySendCompletion(cqe);
            return;
        }

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
                // The kernel took the buffer and nobody was lent it: straight back, without touching the count of
                // buffers lent (which only a lend may raise and only its return may lower).
                _bufferRing?.Recycle((ushort)(cqe.flags >> IORING_CQE_BUFFER_SHIFT));
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
                OnReceiveCompletion((ProactorConnection)owner, cqe);
                break;
            case OperationKind.Send:
                OnSendCompletion((ProactorConnection)owner, cqe);
                break;
            case OperationKind.Accept:
                DispatchCompletion(owner, kind, ToResult(cqe.res), more, default, cqe.res >= 0 ? new SafeFileDescriptorHandle(cqe.res) : null);
                break;
            default:
                DispatchCompletion(owner, kind, ToResult(cqe.res), more, default, null);
                break;
        }
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

    internal static IoResult ToResult(int res)
        => res >= 0 ? IoResult.Success(res) : IoResult.Failure(Errno.ToSocketError(-res), -res, Errno.Name(-res));
}
