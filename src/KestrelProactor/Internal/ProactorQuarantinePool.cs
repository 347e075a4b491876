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

    public override int MaxBufferSize => pool.MaxBufferSize;

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

    public override IMemoryOwner<byte> Rent(int minBufferSize = -1) => new Block(this, pool.Rent(minBufferSize));

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
