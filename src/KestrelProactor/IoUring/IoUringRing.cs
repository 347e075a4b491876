using System.Runtime.InteropServices;
using static KestrelProactor.Interop.Linux.Interop;
using static KestrelProactor.Interop.Linux.Interop.IoUring;

namespace KestrelProactor.IoUring;

/// <summary>
/// One io_uring instance: the ring fd, the mapped submission and completion queues, and the SQE array.
/// Used by one thread only (its dispatcher), which is also what <c>IORING_SETUP_SINGLE_ISSUER</c> promises the
/// kernel. The only cross-party races are with the kernel, through the head and tail indices:
/// <list type="bullet">
/// <item>SQ: we write SQEs, then publish the tail with a release store; the kernel reads the tail with an
/// acquire load and advances the head as it consumes entries.</item>
/// <item>CQ: the kernel writes CQEs, then publishes the tail with a release store; we read the tail with an
/// acquire load, read the CQEs, then publish the head with a release store so the kernel may reuse them.</item>
/// <item>With <c>IORING_SETUP_SQPOLL</c> the kernel side of the SQ is a polling thread that runs beside ours: it may
/// set <c>IORING_SQ_NEED_WAKEUP</c> and sleep at any moment, so the tail is published and then, after a full
/// fence, the flag is read; a set flag means the next enter carries <c>IORING_ENTER_SQ_WAKEUP</c>.</item>
/// </list>
/// </summary>
internal sealed unsafe partial class IoUringRing : IDisposable
{
    private readonly SafeFileDescriptorHandle _ringFd;
    private readonly SafeMappedRegionHandle _sqRing;
    private readonly SafeMappedRegionHandle? _cqRing;
    private readonly SafeMappedRegionHandle _sqes;

    private readonly uint* _sqHead;
    private readonly uint* _sqTail;
    private readonly uint* _sqFlags;
    private readonly uint _sqMask;
    private readonly io_uring_sqe* _sqeArray;

    private readonly uint* _cqHead;
    private readonly uint* _cqTail;
    private readonly uint* _cqOverflow;
    private readonly uint _cqMask;
    private readonly io_uring_cqe* _cqes;

    private uint _sqeTail;      // next SQE we fill; published to *_sqTail by Publish
    private int _enterFd;
    private uint _enterFlags;
    private uint _lastOverflow;

    private IoUringRing(SafeFileDescriptorHandle ringFd, in io_uring_params p)
    {
        _ringFd = ringFd;
        Flags = p.flags;
        Features = p.features;
        SqEntries = p.sq_entries;
        CqEntries = p.cq_entries;
        _enterFd = ringFd.Fd;

        nuint sqRingSize = p.sq_off.array + p.sq_entries * sizeof(uint);
        nuint cqRingSize = p.cq_off.cqes + p.cq_entries * (uint)sizeof(io_uring_cqe);
        bool singleMap = (p.features & IORING_FEAT_SINGLE_MMAP) != 0;
        if (singleMap)
        {
            sqRingSize = Math.Max(sqRingSize, cqRingSize);
        }

        _sqRing = SafeMappedRegionHandle.MapRing(ringFd.Fd, sqRingSize, IORING_OFF_SQ_RING);
        _cqRing = singleMap ? null : SafeMappedRegionHandle.MapRing(ringFd.Fd, cqRingSize, IORING_OFF_CQ_RING);
        _sqes = SafeMappedRegionHandle.MapRing(ringFd.Fd, p.sq_entries * (nuint)sizeof(io_uring_sqe), IORING_OFF_SQES);

        byte* sq = _sqRing.Pointer;
        byte* cq = (_cqRing ?? _sqRing).Pointer;
        _sqHead = (uint*)(sq + p.sq_off.head);
        _sqTail = (uint*)(sq + p.sq_off.tail);
        _sqFlags = (uint*)(sq + p.sq_off.flags);
        _sqMask = *(uint*)(sq + p.sq_off.ring_mask);
        _sqeArray = (io_uring_sqe*)_sqes.Pointer;
        // The indirection array maps ring slots to SQEs; we always use slot i for SQE i, so fill it once.
        uint* array = (uint*)(sq + p.sq_off.array);
        for (uint i = 0; i < p.sq_entries; i++)
        {
            array[i] = i;
        }

        _cqHead = (uint*)(cq + p.cq_off.head);
        _cqTail = (uint*)(cq + p.cq_off.tail);
        _cqOverflow = (uint*)(cq + p.cq_off.overflow);
        _cqMask = *(uint*)(cq + p.cq_off.ring_mask);
        _cqes = (io_uring_cqe*)(cq + p.cq_off.cqes);
        _sqeTail = *_sqTail;
    }

    public uint Flags { get; }

    public uint Features { get; }

    /// <summary>Enters that woke a sleeping polling thread (<c>IORING_ENTER_SQ_WAKEUP</c>); counted for tests.</summary>
    public long SubmissionThreadWakeups { get; private set; }

    /// <summary>Whether a kernel thread polls the SQ (<c>IORING_SETUP_SQPOLL</c>): submitting needs no enter while it is awake.</summary>
    public bool PollsSubmissions => (Flags & IORING_SETUP_SQPOLL) != 0;

    /// <summary>
    /// Whether the SQEs filled so far need an <c>io_uring_enter</c> to reach the kernel: always when there are
    /// some, unless a polling thread is awake to take them. Publishes them first, so a polling thread can.
    /// </summary>
    public bool SubmissionsNeedEnter
    {
        get
        {
            if (PendingSubmissions == 0)
            {
                return false;
            }

            return !PollsSubmissions || PublishAndCheckPollerAsleep();
        }
    }

    /// <summary>
    /// Publishes the filled SQEs and tells whether the polling thread is asleep (<c>IORING_SQ_NEED_WAKEUP</c>), so
    /// an enter must wake it to take them. Full fence between the two: the tail store must be visible before the
    /// flag is read, or the thread could go to sleep between them without seeing these entries and without this
    /// side seeing it asleep.
    /// </summary>
    private bool PublishAndCheckPollerAsleep()
    {
        Publish();
        Interlocked.MemoryBarrier();
        return (Volatile.Read(ref *_sqFlags) & IORING_SQ_NEED_WAKEUP) != 0;
    }

    /// <summary>Whether a wait can carry its own timeout (<c>IORING_FEAT_EXT_ARG</c>, 5.11+).</summary>
    public bool SupportsTimedWait => (Features & IORING_FEAT_EXT_ARG) != 0;

    public uint SqEntries { get; }

    public uint CqEntries { get; }

    public SafeFileDescriptorHandle RingFd => _ringFd;

    /// <summary>SQEs published to the kernel (the shared tail) and not yet consumed by it (for diagnostics).</summary>
    public uint PublishedSubmissions => Volatile.Read(ref *_sqTail) - Volatile.Read(ref *_sqHead);

    /// <summary>SQEs filled and not yet consumed by the kernel.</summary>
    public uint PendingSubmissions => _sqeTail - Volatile.Read(ref *_sqHead);

    /// <summary>CQEs ready to be read.</summary>
    public uint ReadyCompletions => Volatile.Read(ref *_cqTail) - *_cqHead; // acquire: pairs with the kernel's release of the tail

    /// <summary>True when the kernel has deferred work or overflowed completions that only an enter will post.</summary>
    public bool NeedsEnter => (Volatile.Read(ref *_sqFlags) & (IORING_SQ_TASKRUN | IORING_SQ_CQ_OVERFLOW)) != 0;

    /// <summary>The SQ ring's flags as the kernel last wrote them (for diagnostics).</summary>
    public uint SqFlags => Volatile.Read(ref *_sqFlags);

    /// <summary>True while the kernel holds completions that did not fit in the CQ (NODROP keeps them for us).</summary>
    public bool HasOverflowBacklog => (Volatile.Read(ref *_sqFlags) & IORING_SQ_CQ_OVERFLOW) != 0;

    /// <summary>
    /// Completions the kernel dropped since the last call: its overflow counter counts only completions it could
    /// neither post nor keep (with NODROP, those it had no memory to hold back).
    /// </summary>
    public uint TakeOverflowDelta()
    {
        uint overflow = Volatile.Read(ref *_cqOverflow);
        uint delta = overflow - _lastOverflow;
        _lastOverflow = overflow;
        return delta;
    }

    /// <summary>
    /// Tests only: counts one dropped completion in the kernel's own counter (shared memory), as the kernel does when
    /// it drops one; dispatcher thread.
    /// </summary>
    internal void CountDroppedCompletionForTests() => Interlocked.Increment(ref *(int*)_cqOverflow);

    /// <summary>
    /// Tests only, while the dispatcher is held (it does not move the head meanwhile): the CQEs ready to be read, as
    /// copies, oldest first.
    /// </summary>
    internal List<io_uring_cqe> ReadyCompletionsForTests()
    {
        uint head = Volatile.Read(ref *_cqHead);
        uint tail = Volatile.Read(ref *_cqTail);
        var ready = new List<io_uring_cqe>((int)(tail - head));
        for (uint i = head; i != tail; i++)
        {
            ready.Add(_cqes[i & _cqMask]);
        }

        return ready;
    }

    /// <summary>
    /// Creates a ring, asking for the preferred setup flags and dropping, one at a time, those the kernel
    /// refuses with EINVAL. <paramref name="refused"/> collects what was dropped.
    /// </summary>
    public static IoUringRing Create(uint sqEntries, uint cqEntries, uint[] optionalFlagsInDropOrder, List<string> refused, uint sqThreadIdleMilliseconds = 0)
    {
        // Set up disabled, so it can be restricted before its first enter (IoUringRing.Restrictions.cs).
        uint flags = IORING_SETUP_CQSIZE | IORING_SETUP_CLAMP | IORING_SETUP_R_DISABLED;
        foreach (uint flag in optionalFlagsInDropOrder)
        {
            flags |= flag;
        }

        int dropIndex = 0;
        while (true)
        {
            io_uring_params p = default;
            p.flags = flags;
            p.cq_entries = cqEntries;
            p.sq_thread_idle = sqThreadIdleMilliseconds;
            int fd = Setup(sqEntries, &p);
            if (fd >= 0)
            {
                var handle = new SafeFileDescriptorHandle(fd);
                IoUringRing? ring = null;
                try
                {
                    ring = new IoUringRing(handle, p);
                    ring.RestrictAndEnable();
                    return ring;
                }
                catch
                {
                    ring?.Dispose();
                    handle.Dispose();
                    throw;
                }
            }

            int errno = Marshal.GetLastPInvokeError();
            if (errno == Errno.EINVAL && dropIndex < optionalFlagsInDropOrder.Length)
            {
                uint drop = optionalFlagsInDropOrder[dropIndex++];
                flags &= ~drop;
                refused.Add(SetupFlagName(drop));
                continue;
            }

            if (errno == Errno.EINVAL && (flags & IORING_SETUP_R_DISABLED) != 0)
            {
                // Before 5.10: no restrictions; the ring runs unrestricted and the start-up line says so.
                flags &= ~IORING_SETUP_R_DISABLED;
                continue;
            }

            throw new IoUringException($"io_uring_setup failed: {Errno.Name(errno)}{Explain(errno)}", errno);
        }
    }

    private static string Explain(int errno) => IoUringSetupDiagnosis.Explain(errno);

    public static string SetupFlagName(uint flag) => flag switch
    {
        IORING_SETUP_SINGLE_ISSUER => "SINGLE_ISSUER",
        IORING_SETUP_SQPOLL => "SQPOLL",
        IORING_SETUP_DEFER_TASKRUN => "DEFER_TASKRUN",
        IORING_SETUP_COOP_TASKRUN => "COOP_TASKRUN",
        IORING_SETUP_TASKRUN_FLAG => "TASKRUN_FLAG",
        IORING_SETUP_SUBMIT_ALL => "SUBMIT_ALL",
        IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN => "SINGLE_ISSUER|DEFER_TASKRUN",
        IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG => "COOP_TASKRUN|TASKRUN_FLAG",
        _ => "0x" + flag.ToString("x"),
    };

    /// <summary>
    /// The next free SQE, zeroed, or null when the SQ is full (the caller submits, then tries again).
    /// </summary>
    public io_uring_sqe* TryGetSqe()
    {
        // acquire: pairs with the kernel's release of the head once it has read the entries.
        if (_sqeTail - Volatile.Read(ref *_sqHead) >= SqEntries)
        {
            return null;
        }

        io_uring_sqe* sqe = &_sqeArray[_sqeTail & _sqMask];
        *sqe = default;
        _sqeTail++;
        return sqe;
    }

    /// <summary>Makes the filled SQEs visible to the kernel.</summary>
    private void Publish()
    {
        // release: the SQE contents are written before the kernel can observe the new tail.
        Volatile.Write(ref *_sqTail, _sqeTail);
    }

    /// <summary>
    /// Submits every pending SQE and, when <paramref name="minComplete"/> &gt; 0, waits for that many completions,
    /// in one system call. Returns the number submitted, or -errno.
    /// </summary>
    public int SubmitAndWait(uint minComplete) => SubmitAndWait(minComplete, -1);

    /// <summary>
    /// As <see cref="SubmitAndWait(uint)"/>, but waits at most <paramref name="timeoutNanoseconds"/> when that is not
    /// negative (needs <see cref="SupportsTimedWait"/>); a wait that times out returns -ETIME.
    /// </summary>
    public int SubmitAndWait(uint minComplete, long timeoutNanoseconds)
    {
        Publish();
        uint toSubmit = PendingSubmissions;
        uint flags = _enterFlags | IORING_ENTER_GETEVENTS;
        if (PollsSubmissions)
        {
            // The polling thread submits; the enter only wakes it when it sleeps and entries wait for it (woken with
            // nothing to take, it would spin a whole idle period for nothing), or waits for it to make room.
            if (toSubmit != 0 && PublishAndCheckPollerAsleep())
            {
                flags |= IORING_ENTER_SQ_WAKEUP;
                SubmissionThreadWakeups++;
            }

            if (toSubmit >= SqEntries)
            {
                flags |= IORING_ENTER_SQ_WAIT;
            }
        }

        kernel_timespec timeout = default;
        io_uring_getevents_arg arg = default;
        bool timed = minComplete != 0 && timeoutNanoseconds >= 0;
        if (timed && !SupportsTimedWait)
        {
            // Before 5.11 an enter cannot carry a timeout (EXT_ARG is refused with EINVAL, and nothing is submitted):
            // a bounded wait becomes a poll, which its caller's deadline loop repeats, rather than an unbounded one.
            timed = false;
            minComplete = 0;
        }

        if (timed)
        {
            timeout.tv_sec = timeoutNanoseconds / 1_000_000_000;
            timeout.tv_nsec = timeoutNanoseconds % 1_000_000_000;
            arg.ts = (ulong)&timeout;
            flags |= IORING_ENTER_EXT_ARG;
        }

        return EnterRetryingInterrupts(toSubmit, minComplete, flags, timed ? &arg : null);
    }

    /// <summary>One io_uring_enter, repeated when a signal interrupted it; the count it returned, or -errno.</summary>
    private int EnterRetryingInterrupts(uint toSubmit, uint minComplete, uint flags, io_uring_getevents_arg* arg)
    {
        while (true)
        {
            int result = arg is not null ? Enter(_enterFd, toSubmit, minComplete, flags, arg) : Enter(_enterFd, toSubmit, minComplete, flags);
            if (result >= 0)
            {
                return result;
            }

            int errno = Marshal.GetLastPInvokeError();
            if (errno != Errno.EINTR)
            {
                return -errno;
            }
        }
    }

    /// <summary>
    /// An enter that submits nothing and waits for nothing: the kernel posts the completions it held back while the CQ
    /// was full, as many as now fit. Nothing is published first, so no SQE filled since the last enter reaches the
    /// kernel. For the end of a failed loop. Returns what the enter returned, or -errno.
    /// </summary>
    public int FlushCompletionBacklog() => EnterRetryingInterrupts(0, 0, _enterFlags | IORING_ENTER_GETEVENTS, null);

    /// <summary>
    /// The SQEs filled that the kernel can no longer take once this thread stops entering the ring: every one past
    /// the kernel's head, or with a polling thread (which takes what is published at any time) only those not yet
    /// published. For the end of a failed loop, which never enters again.
    /// </summary>
    public (uint Start, uint End) UntakenSubmissions
        => (PollsSubmissions ? Volatile.Read(ref *_sqTail) : Volatile.Read(ref *_sqHead), _sqeTail);

    /// <summary>The SQE at a ring position in <see cref="UntakenSubmissions"/>.</summary>
    public io_uring_sqe* SqeAt(uint position) => &_sqeArray[position & _sqMask];

    /// <summary>Reads the next ready CQE, if any. <see cref="AdvanceCompletions"/> releases what was read.</summary>
    public bool TryPeekCompletion(uint index, out io_uring_cqe cqe)
    {
        uint head = *_cqHead + index;
        if (head == Volatile.Read(ref *_cqTail))
        {
            cqe = default;
            return false;
        }

        cqe = _cqes[head & _cqMask];
        return true;
    }

    public void AdvanceCompletions(uint count)
    {
        // release: our reads of the CQEs happen before the kernel may overwrite them.
        Volatile.Write(ref *_cqHead, *_cqHead + count);
    }

    /// <summary>Registers the ring fd with itself so each enter skips the fd lookup (5.18+).</summary>
    public bool TryRegisterRingFd()
    {
        io_uring_rsrc_update update = default;
        update.offset = uint.MaxValue; // let the kernel pick a slot
        update.data = (ulong)_ringFd.Fd;
        int result = Register(_ringFd.Fd, IORING_REGISTER_RING_FDS, &update, 1);
        if (result != 1)
        {
            return false;
        }

        _enterFd = (int)update.offset;
        _enterFlags |= IORING_ENTER_REGISTERED_RING;
        return true;
    }

    /// <summary>Which opcodes this kernel supports (IORING_REGISTER_PROBE, 5.6+).</summary>
    public bool[] ProbeOpcodes()
    {
        const int OpsCount = 256;
        int size = sizeof(io_uring_probe) + OpsCount * sizeof(io_uring_probe_op);
        byte* buffer = stackalloc byte[size];
        new Span<byte>(buffer, size).Clear();
        int result = Register(_ringFd.Fd, IORING_REGISTER_PROBE, buffer, OpsCount);
        var supported = new bool[OpsCount];
        if (result < 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            throw new IoUringException($"io_uring_register(PROBE) failed: {Errno.Name(errno)}", errno);
        }

        var probe = (io_uring_probe*)buffer;
        var ops = (io_uring_probe_op*)(buffer + sizeof(io_uring_probe));
        for (int i = 0; i < probe->ops_len && i < OpsCount; i++)
        {
            supported[ops[i].op] = (ops[i].flags & IO_URING_OP_SUPPORTED) != 0;
        }

        return supported;
    }

    public int RegisterRaw(uint opcode, void* arg, uint nrArgs)
    {
        int result = Register(_ringFd.Fd, opcode, arg, nrArgs);
        return result < 0 ? -Marshal.GetLastPInvokeError() : result;
    }

    public void Dispose()
    {
        if ((_enterFlags & IORING_ENTER_REGISTERED_RING) != 0)
        {
            // The registration holds its own reference to the ring, which would keep it (and every operation
            // in flight, writing into their buffers) alive until this thread exits; drop it first.
            io_uring_rsrc_update update = default;
            update.offset = (uint)_enterFd;
            Register(_ringFd.Fd, IORING_UNREGISTER_RING_FDS, &update, 1);
            _enterFlags &= ~IORING_ENTER_REGISTERED_RING;
            _enterFd = _ringFd.Fd;
        }

        // Closing the ring fd makes the kernel cancel what is in flight; the mappings can go after it.
        _ringFd.Dispose();
        _sqes.Dispose();
        _cqRing?.Dispose();
        _sqRing.Dispose();
    }
}
