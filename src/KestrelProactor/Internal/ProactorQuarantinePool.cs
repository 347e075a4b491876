using System.Buffers;

namespace KestrelProactor.Internal;

/// <summary>
/// A connection's view of its dispatcher's memory pool, for the pipes whose memory the kernel reads or writes (the
/// output, and the input when receives land in pipe memory). Normally every block goes straight back to the pool.
/// Once <see cref="Quarantine"/> is called (the dispatcher ended while a receive or a send of this connection may
/// still be live in the kernel), returned blocks are kept here instead, rooted with the connection, so the pipes can
/// complete (and the application's pending read and flush end) without handing the kernel's memory to anyone else.
/// </summary>
internal sealed class ProactorQuarantinePool(MemoryPool<byte> pool) : MemoryPool<byte>
{
    private readonly Lock _gate = new();
    private volatile bool _quarantined;
    private List<IMemoryOwner<byte>>? _kept;

    /// <summary>
    /// No limit: a pipe asked for more than the pool's block size would otherwise take the memory from the shared
    /// array pool itself, past this quarantine. Such requests are served from that pool here instead, and kept like
    /// any block once quarantined.
    /// </summary>
    public override int MaxBufferSize => int.MaxValue;

    /// <summary>The block size of the pool underneath (its <see cref="MemoryPool{T}.MaxBufferSize"/>).</summary>
    public int BlockSize => pool.MaxBufferSize;

    /// <summary>Blocks kept since <see cref="Quarantine"/> (for tests).</summary>
    public int KeptCount
    {
        get
        {
            lock (_gate)
            {
                return _kept?.Count ?? 0;
            }
        }
    }

    public override IMemoryOwner<byte> Rent(int minBufferSize = -1)
        => new Block(this, pool.MaxBufferSize < 0 || minBufferSize <= pool.MaxBufferSize ? pool.Rent(minBufferSize) : new SharedArray(minBufferSize));

    /// <summary>From now on no block goes back to the pool. A block the kernel may use is only returned when its
    /// pipe completes, which comes after this, on the same thread.</summary>
    public void Quarantine() => _quarantined = true;

    // The dispatcher's pool is not this connection's to dispose.
    protected override void Dispose(bool disposing)
    {
    }

    private void Return(IMemoryOwner<byte> owner)
    {
        if (_quarantined)
        {
            lock (_gate)
            {
                (_kept ??= []).Add(owner);
            }

            return;
        }

        owner.Dispose();
    }

    /// <summary>Memory larger than the pool's blocks, from the shared array pool, as the pipe would have taken it.</summary>
    private sealed class SharedArray(int minimumLength) : IMemoryOwner<byte>
    {
        private byte[]? _array = ArrayPool<byte>.Shared.Rent(minimumLength);

        public Memory<byte> Memory => _array ?? throw new ObjectDisposedException(nameof(SharedArray));

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _array, null) is { } array)
            {
                ArrayPool<byte>.Shared.Return(array);
            }
        }
    }

    private sealed class Block(ProactorQuarantinePool pool, IMemoryOwner<byte> owner) : IMemoryOwner<byte>
    {
        private IMemoryOwner<byte>? _owner = owner;

        public Memory<byte> Memory => (_owner ?? throw new ObjectDisposedException(nameof(Block))).Memory;

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _owner, null) is { } owner)
            {
                pool.Return(owner);
            }
        }
    }
}
