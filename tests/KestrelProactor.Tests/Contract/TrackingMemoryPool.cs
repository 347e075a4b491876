using System.Buffers;
using Microsoft.AspNetCore.Connections;

namespace KestrelProactor.Tests.Contract;

/// <summary>
/// A memory pool that never reuses a block, counts blocks still out, and poisons each block when it is returned, so
/// a block returned twice, never returned, or written after its return (by a late kernel completion, say) is caught.
/// </summary>
internal sealed class TrackingMemoryPool : MemoryPool<byte>, IMemoryPoolFactory<byte>
{
    public const int BlockSize = 4096;
    private const byte Poison = 0xDD;

    private readonly Lock _gate = new();
    private readonly List<byte[]> _returned = [];
    private readonly List<string> _errors = [];
    private readonly System.Runtime.CompilerServices.ConditionalWeakTable<byte[], object> _blocks = new();
    private int _outstanding;
    private int _rented;
    private int _disposeCount;
    private int _rentedAfterDispose;

    public override int MaxBufferSize => BlockSize;

    public int Outstanding => Volatile.Read(ref _outstanding);

    public int Rented => Volatile.Read(ref _rented);

    /// <summary>How many times the pool was disposed (an owner disposes it once; more means two owners thought it theirs).</summary>
    public int DisposeCount => Volatile.Read(ref _disposeCount);

    /// <summary>Blocks rented after the pool was disposed: whoever rented them used a pool its owner had released.</summary>
    public int RentedAfterDispose => Volatile.Read(ref _rentedAfterDispose);

    public override IMemoryOwner<byte> Rent(int minBufferSize = -1)
    {
        // Larger requests are served too (a pool may be asked for more than MaxBufferSize); they are just as tracked.
        int size = Math.Max(minBufferSize, BlockSize);
        if (DisposeCount != 0)
        {
            Interlocked.Increment(ref _rentedAfterDispose);
        }

        Interlocked.Increment(ref _rented);
        Interlocked.Increment(ref _outstanding);
        byte[] array = GC.AllocateArray<byte>(size, pinned: true);
        _blocks.Add(array, this);
        return new Block(this, array);
    }

    /// <summary>Whether <paramref name="memory"/> lies in a block this pool handed out.</summary>
    public bool Owns(ReadOnlyMemory<byte> memory)
        => System.Runtime.InteropServices.MemoryMarshal.TryGetArray(memory, out ArraySegment<byte> segment) &&
           _blocks.TryGetValue(segment.Array!, out _);

    /// <summary>The problems seen so far: double returns, blocks written after their return, rents after dispose.</summary>
    public IReadOnlyList<string> CollectErrors()
    {
        lock (_gate)
        {
            var errors = new List<string>(_errors);
            if (RentedAfterDispose > 0)
            {
                errors.Add($"{RentedAfterDispose} block(s) were rented after the pool was disposed.");
            }

            int written = _returned.Count(block => block.AsSpan().ContainsAnyExcept(Poison));
            if (written > 0)
            {
                errors.Add($"{written} block(s) were written after they were returned to the pool.");
            }

            return errors;
        }
    }

    MemoryPool<byte> IMemoryPoolFactory<byte>.Create(MemoryPoolOptions? options) => this;

    // Recorded, not acted on: blocks are checked by CollectErrors, not freed here, so a test sees a rent after dispose
    // (a pool released under a user) instead of a crash somewhere else.
    protected override void Dispose(bool disposing)
    {
        Interlocked.Increment(ref _disposeCount);
    }

    private void Return(byte[] block)
    {
        block.AsSpan().Fill(Poison);
        lock (_gate)
        {
            _returned.Add(block);
        }

        Interlocked.Decrement(ref _outstanding);
    }

    private void ReportDoubleReturn()
    {
        lock (_gate)
        {
            _errors.Add("A block was returned twice.");
        }
    }

    // Array-backed like Kestrel's own pool blocks: the socket transport's scatter/gather sends require arrays.
    private sealed class Block(TrackingMemoryPool pool, byte[] array) : IMemoryOwner<byte>
    {
        private int _returned;

        public Memory<byte> Memory => array;

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _returned, 1) != 0)
            {
                pool.ReportDoubleReturn();
                return;
            }

            pool.Return(array);
        }
    }
}
