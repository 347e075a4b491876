using static KestrelProactor.Interop.Linux.Interop.IoUring;

namespace KestrelProactor.IoUring;

/// <summary>
/// A provided buffer ring (IORING_REGISTER_PBUF_RING, 5.19+): receive buffers the kernel picks from only when
/// data arrives, so an idle connection holds none. One per dispatcher, touched only by its thread.
/// <para>
/// Protocol: the kernel consumes entries from the head (private to it); we add entries at the tail and publish
/// the tail (a u16 in entry 0's reserved field) with a release store, which pairs with the kernel's acquire
/// load when it picks a buffer.
/// </para>
/// </summary>
internal sealed unsafe class IoUringBufferRing : IDisposable
{
    private readonly IoUringRing _ring;
    private readonly SafeMappedRegionHandle _entries;
    private readonly SafeMappedRegionHandle _buffers;
    private readonly io_uring_buf* _bufs;
    private readonly ushort _mask;
    private readonly NativeBufferManager[] _managers;
    private ushort _tail;
    private bool _tailDirty;

    // Buffers not yet handed to the kernel. The ring is FIFO, so a fully provided ring cycles through (and
    // makes resident) every buffer even at low load; providing only what the load needs keeps the working set,
    // and the RSS, small. Returned buffers go straight back, so they stay hot.
    private readonly Stack<ushort> _unprovided = new();
    private int _available;
    private int _lowWater;

    private IoUringBufferRing(IoUringRing ring, ushort groupId, int count, int bufferSize, SafeMappedRegionHandle entries, SafeMappedRegionHandle buffers)
    {
        _ring = ring;
        GroupId = groupId;
        Count = count;
        BufferSize = bufferSize;
        _entries = entries;
        _buffers = buffers;
        _bufs = (io_uring_buf*)entries.Pointer;
        _mask = (ushort)(count - 1);
        _managers = new NativeBufferManager[count];
        for (int i = 0; i < count; i++)
        {
            _managers[i] = new NativeBufferManager(buffers.Pointer + (nint)i * bufferSize, bufferSize);
        }
    }

    /// <summary>The whole of buffer <paramref name="bufferId"/> as <see cref="Memory{T}"/>, for lending it to a pipe.</summary>
    public Memory<byte> GetMemory(ushort bufferId) => _managers[bufferId].Memory;

    public ushort GroupId { get; }

    public int Count { get; }

    public int BufferSize { get; }

    /// <summary>Buffers the kernel has filled and we have not given back yet.</summary>
    public int Lent { get; private set; }

    /// <summary>
    /// Buffers handed to the kernel (published or about to be) whose completions have not arrived: the ring's
    /// content by this side's count. It runs ahead of the kernel while completions that used buffers are on their way.
    /// </summary>
    public int Available => _available;

    /// <summary>Registers a ring of <paramref name="count"/> (a power of two) buffers, or returns null with the errno.</summary>
    public static IoUringBufferRing? TryCreate(IoUringRing ring, ushort groupId, int count, int bufferSize, out int errno)
    {
        nuint entriesSize = (nuint)(count * sizeof(io_uring_buf));
        SafeMappedRegionHandle entries = SafeMappedRegionHandle.MapAnonymous(RoundToPage(entriesSize));
        SafeMappedRegionHandle buffers;
        try
        {
            buffers = SafeMappedRegionHandle.MapAnonymous(RoundToPage((nuint)count * (nuint)bufferSize));
        }
        catch
        {
            entries.Dispose();
            throw;
        }

        io_uring_buf_reg reg = default;
        reg.ring_addr = (ulong)entries.Pointer;
        reg.ring_entries = (uint)count;
        reg.bgid = groupId;
        int result = ring.RegisterRaw(IORING_REGISTER_PBUF_RING, &reg, 1);
        if (result < 0)
        {
            errno = -result;
            buffers.Dispose();
            entries.Dispose();
            return null;
        }

        errno = 0;
        var bufferRing = new IoUringBufferRing(ring, groupId, count, bufferSize, entries, buffers);
        for (int i = count - 1; i >= 0; i--)
        {
            bufferRing._unprovided.Push((ushort)i);
        }

        bufferRing._lowWater = Math.Min(count, InitialLowWater);
        bufferRing.EnsureHeadroom();
        bufferRing.Publish();
        return bufferRing;
    }

    private const int InitialLowWater = 32;

    /// <summary>Tops the ring up to its low-water mark from buffers never used yet; call once per pass.</summary>
    public void EnsureHeadroom()
    {
        while (_available < _lowWater && _unprovided.TryPop(out ushort bufferId))
        {
            Add(bufferId);
        }
    }

    /// <summary>The kernel found the ring empty (-ENOBUFS): keep more headroom from now on.</summary>
    public void OnExhausted()
    {
        _lowWater = Math.Min(Count, _lowWater * 2);
    }

    private static nuint RoundToPage(nuint size) => (size + 4095) & ~(nuint)4095;

    /// <summary>The bytes of buffer <paramref name="bufferId"/> that a receive filled.</summary>
    public ReadOnlySpan<byte> GetData(ushort bufferId, int length)
    {
        Lent++;
        _available--;
        return new ReadOnlySpan<byte>(_buffers.Pointer + (nint)bufferId * BufferSize, length);
    }

    /// <summary>Gives a buffer back; visible to the kernel after <see cref="Publish"/>.</summary>
    public void Return(ushort bufferId)
    {
        Add(bufferId);
        Lent--;
    }

    /// <summary>
    /// Gives straight back a buffer the kernel filled for a completion nobody claims (its owner is gone): it was
    /// never lent, so the lent count stays as it is.
    /// </summary>
    public void Recycle(ushort bufferId)
    {
        _available--;
        Add(bufferId);
    }

    private void Add(ushort bufferId)
    {
        io_uring_buf* entry = &_bufs[_tail & _mask];
        entry->addr = (ulong)(_buffers.Pointer + (nint)bufferId * BufferSize);
        entry->len = (uint)BufferSize;
        entry->bid = bufferId;
        _tail++;
        _available++;
        _tailDirty = true;
    }

    /// <summary>Publishes returned and newly provided buffers; called once per pass, before the next submit.</summary>
    public void Publish()
    {
        EnsureHeadroom();
        if (!_tailDirty)
        {
            return;
        }

        _tailDirty = false;
        // The tail is entry 0's resv field (offset 14). release: entries are written before the tail moves.
        Volatile.Write(ref *(ushort*)((byte*)_bufs + 14), _tail);
    }

    public void Dispose() => Dispose(leaveBuffersMapped: false);

    /// <summary>Unregisters the ring. With <paramref name="leaveBuffersMapped"/>, lent buffers stay readable (leaked).</summary>
    public void Dispose(bool leaveBuffersMapped)
    {
        io_uring_buf_reg reg = default;
        reg.bgid = GroupId;
        if (!_ring.RingFd.IsClosed)
        {
            _ring.RegisterRaw(IORING_UNREGISTER_PBUF_RING, &reg, 1);
        }

        if (leaveBuffersMapped)
        {
            _buffers.SetHandleAsInvalid();
        }
        else
        {
            _buffers.Dispose();
        }

        _entries.Dispose();
    }

    /// <summary>Exposes one native buffer as <see cref="Memory{T}"/>; the mapping is already pinned.</summary>
    private sealed class NativeBufferManager(byte* pointer, int length) : System.Buffers.MemoryManager<byte>
    {
        public override Span<byte> GetSpan() => new(pointer, length);

        public override System.Buffers.MemoryHandle Pin(int elementIndex = 0) => new(pointer + elementIndex);

        public override void Unpin()
        {
        }

        protected override void Dispose(bool disposing)
        {
        }
    }
}
