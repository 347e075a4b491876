using System.Buffers;

namespace KestrelProactor.FaultHost;

/// <summary>
/// The run's memory pool: never reuses a block, counts blocks still out, and poisons each block it gets back, so a block
/// never returned, returned twice, or written after its return (by a completion that came too late) is seen at the end.
/// </summary>
internal sealed class TrackingPool : MemoryPool<byte>
{
    private const int BlockSize = 4096;
    private const byte Poison = 0xA5;
    private readonly Lock _gate = new();
    private readonly List<byte[]> _returned = [];
    private int _outstanding;
    private int _doubleReturns;
    private int _disposed;
    private int _rentedAfterDispose;
    private readonly System.Collections.Concurrent.ConcurrentDictionary<byte[], string>? _rentStacks =
        Environment.GetEnvironmentVariable("FAULTHOST_TRACE_POOL") == "1" ? new(ReferenceEqualityComparer.Instance) : null;

    /// <summary>With FAULTHOST_TRACE_POOL=1: where the blocks still out were rented, most frequent first.</summary>
    public IEnumerable<string> OutstandingStacks()
        => _rentStacks is null ? [] : _rentStacks.Values.GroupBy(v => v).OrderByDescending(g => g.Count()).Take(3).Select(g => $"{g.Count()} x {g.Key}");

    public override int MaxBufferSize => BlockSize;

    public int Outstanding => Volatile.Read(ref _outstanding);

    public override IMemoryOwner<byte> Rent(int minBufferSize = -1)
    {
        if (Volatile.Read(ref _disposed) != 0)
        {
            Interlocked.Increment(ref _rentedAfterDispose);
        }

        Interlocked.Increment(ref _outstanding);
        byte[] array = GC.AllocateArray<byte>(Math.Max(minBufferSize, BlockSize), pinned: true);
        _rentStacks?.TryAdd(array, new System.Diagnostics.StackTrace(1, false).ToString());
        return new Block(this, array);
    }

    public List<string> Errors()
    {
        var errors = new List<string>();
        lock (_gate)
        {
            int written = _returned.Count(static block => block.AsSpan().ContainsAnyExcept(Poison));
            if (written != 0)
            {
                errors.Add($"{written} pool block(s) written after their return");
            }
        }

        if (_doubleReturns != 0)
        {
            errors.Add($"{_doubleReturns} pool block(s) returned twice");
        }

        if (_rentedAfterDispose != 0)
        {
            errors.Add($"{_rentedAfterDispose} pool block(s) rented after the pool was disposed");
        }

        return errors;
    }

    protected override void Dispose(bool disposing) => Interlocked.Exchange(ref _disposed, 1);

    private void Return(byte[] array)
    {
        _rentStacks?.TryRemove(array, out _);
        array.AsSpan().Fill(Poison);
        lock (_gate)
        {
            _returned.Add(array);
        }

        Interlocked.Decrement(ref _outstanding);
    }

    private sealed class Block(TrackingPool pool, byte[] array) : IMemoryOwner<byte>
    {
        private int _returned;

        public Memory<byte> Memory => array;

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _returned, 1) != 0)
            {
                Interlocked.Increment(ref pool._doubleReturns);
                return;
            }

            pool.Return(array);
        }
    }
}
