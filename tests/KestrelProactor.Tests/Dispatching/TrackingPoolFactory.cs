using System.Buffers;
using System.Collections.Concurrent;
using Microsoft.AspNetCore.Connections;

namespace KestrelProactor.Tests.Dispatching;

/// <summary>
/// A memory pool factory for the host's services, as Kestrel's own tests register one: a new pool per
/// <see cref="Create"/>, each recording when it was disposed and how many of its blocks were still out then, so a
/// test can check that every pool the transport took was disposed, and never under a block still in use.
/// </summary>
internal sealed class TrackingPoolFactory : IMemoryPoolFactory<byte>
{
    private readonly ConcurrentQueue<Pool> _pools = new();

    public IReadOnlyList<Pool> Pools => [.. _pools];

    public MemoryPool<byte> Create(MemoryPoolOptions? options = null)
    {
        var pool = new Pool(options?.Owner);
        _pools.Enqueue(pool);
        return pool;
    }

    internal sealed class Pool(string? owner) : MemoryPool<byte>
    {
        private const int BlockSize = 4096;
        private int _outstanding;
        private int _disposed;
        private int _outstandingAtDispose = -1;
        private int _rentedAfterDispose;

        public string? Owner { get; } = owner;

        public override int MaxBufferSize => BlockSize;

        public bool IsDisposed => Volatile.Read(ref _disposed) != 0;

        public int Outstanding => Volatile.Read(ref _outstanding);

        /// <summary>Blocks not yet returned when the pool was disposed (-1 until then).</summary>
        public int OutstandingAtDispose => Volatile.Read(ref _outstandingAtDispose);

        public int RentedAfterDispose => Volatile.Read(ref _rentedAfterDispose);

        public override string ToString() => $"pool of {Owner}: disposed={IsDisposed}, out={Outstanding}, out at dispose={OutstandingAtDispose}, rented after dispose={RentedAfterDispose}";

        public override IMemoryOwner<byte> Rent(int minBufferSize = -1)
        {
            if (IsDisposed)
            {
                Interlocked.Increment(ref _rentedAfterDispose);
            }

            Interlocked.Increment(ref _outstanding);
            return new Block(this, GC.AllocateArray<byte>(Math.Max(minBufferSize, BlockSize), pinned: true));
        }

        protected override void Dispose(bool disposing)
        {
            if (Interlocked.Exchange(ref _disposed, 1) == 0)
            {
                Volatile.Write(ref _outstandingAtDispose, Outstanding);
            }
        }

        private sealed class Block(Pool pool, byte[] array) : IMemoryOwner<byte>
        {
            private int _returned;

            public Memory<byte> Memory => array;

            public void Dispose()
            {
                if (Interlocked.Exchange(ref _returned, 1) == 0)
                {
                    Interlocked.Decrement(ref pool._outstanding);
                }
            }
        }
    }
}
