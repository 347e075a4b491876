using System.Runtime.InteropServices;
using KestrelProactor.Internal;
using static KestrelProactor.Interop.Linux.Interop;
using static KestrelProactor.Interop.Linux.Interop.IoUring;

namespace KestrelProactor.IoUring;

/// <summary>Setting the ring up (the kernel's features decide the tier) and tearing it down.</summary>
internal sealed unsafe partial class IoUringDispatcher
{
    protected override void Initialize()
    {
        ApplyAffinity();
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
            _zeroCopyPool = new IoUringZeroCopyPool(MemoryPool);
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

        // Only the idle blocks: one that waits for a zero-copy notification (or belongs to a send the ring never
        // completed) may still be read by the kernel through the pages it pins and holds, so it is left as it is.
        // Counted for the fault runs' diagnosis: a block on the idle stack twice was recycled twice (two sends then
        // shared it, and the first one's holds were never released); one neither idle nor kept was lost.
        var idle = new HashSet<IoUringSendBlock>(ReferenceEqualityComparer.Instance);
        while (_sendBlocks.TryPop(out IoUringSendBlock? block))
        {
            if (!idle.Add(block))
            {
                SendBlocksRecycledTwice++;
                continue;
            }

            block.Dispose();
        }

        SendBlocksOutAtTeardown = _allSendBlocks.Count - idle.Count;

        KeepSendsAwaitingNotification();
    }

    /// <summary>
    /// A zero-copy send whose result arrived and whose notification has not belongs to no connection any more, only to
    /// this dispatcher's list of blocks; its pages sit in a socket's queue, which outlives the ring, until the peer
    /// acknowledges them or the socket is freed. Its block (with its pins and its holds on the pool blocks) is rooted
    /// for good, so neither the pool nor the collector reuses memory the kernel still sends from.
    /// </summary>
    private void KeepSendsAwaitingNotification()
    {
        if (ZeroCopySendsAwaitingNotification == 0)
        {
            return;
        }

        var kept = new List<IoUringSendBlock>(ZeroCopySendsAwaitingNotification);
        foreach (IoUringSendBlock block in _allSendBlocks)
        {
            if (block.ResultArrived && !block.NotificationArrived)
            {
                kept.Add(block);
            }
        }

        ZeroCopySendsKeptAtTeardown = kept.Count;
        KeepForKernel(kept, $"{kept.Count} zero-copy send(s) awaiting notification ({ZeroCopyBytesAwaitingNotification} bytes)");
    }
}
