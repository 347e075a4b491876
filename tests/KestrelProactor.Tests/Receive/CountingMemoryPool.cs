using System.Buffers;
using Microsoft.AspNetCore.Connections;

namespace KestrelProactor.Tests.Receive;

/// <summary>
/// A memory pool that counts the blocks and bytes out now and at most. Its blocks are 4 KiB, as Kestrel's, but it
/// serves any size: a Pipe asked for more than a pool's MaxBufferSize takes an array from the shared ArrayPool instead,
/// which no pool would count, so here every receive buffer of every transport kind is counted.
/// </summary>
internal sealed class CountingMemoryPool : MemoryPool<byte>, IMemoryPoolFactory<byte>
{
    public const int BlockSize = 4096;

    private readonly Lock _gate = new();
    private int _blocks;
    private long _bytes;
    private int _peakBlocks;
    private long _peakBytes;
    private int _rented;

    public override int MaxBufferSize => 1024 * 1024;

    public int Blocks => Volatile.Read(ref _blocks);

    public long Bytes => Interlocked.Read(ref _bytes);

    public int PeakBlocks => Volatile.Read(ref _peakBlocks);

    public long PeakBytes => Interlocked.Read(ref _peakBytes);

    public int Rented => Volatile.Read(ref _rented);

    public override IMemoryOwner<byte> Rent(int minBufferSize = -1)
    {
        int size = Math.Max(minBufferSize, BlockSize);
        lock (_gate)
        {
            _rented++;
            _blocks++;
            _bytes += size;
            _peakBlocks = Math.Max(_peakBlocks, _blocks);
            _peakBytes = Math.Max(_peakBytes, _bytes);
        }

        return new Block(this, GC.AllocateArray<byte>(size, pinned: true));
    }

    MemoryPool<byte> IMemoryPoolFactory<byte>.Create(MemoryPoolOptions? options) => this;

    protected override void Dispose(bool disposing)
    {
    }

    private void Return(int size)
    {
        lock (_gate)
        {
            _blocks--;
            _bytes -= size;
        }
    }

    private sealed class Block(CountingMemoryPool pool, byte[] array) : IMemoryOwner<byte>
    {
        private int _returned;

        public Memory<byte> Memory => array;

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _returned, 1) == 0)
            {
                pool.Return(array.Length);
            }
        }
    }
}
