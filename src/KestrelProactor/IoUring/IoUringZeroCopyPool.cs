using System.Buffers;
using System.Runtime.InteropServices;

namespace KestrelProactor.IoUring;

/// <summary>
/// The output pipes' memory pool while zero-copy sends are on. A zero-copy send's pages stay the kernel's until
/// its notification (the peer acknowledged the bytes, or the socket's queued data was freed), which comes after
/// the send's result, and so after the output pipe has consumed those bytes, and may come after the connection
/// has closed. Every block this pool hands out can therefore be held by the sends that point into it: when the
/// pipe gives back a block that is still held, the block reaches the pool it came from only once its last hold
/// is released. The connection never waits for a notification; only the memory does.
/// </summary>
internal sealed class IoUringZeroCopyPool(MemoryPool<byte> inner) : MemoryPool<byte>
{
    public override int MaxBufferSize => inner.MaxBufferSize;

    public override IMemoryOwner<byte> Rent(int minBufferSize = -1) => new Block(inner.Rent(minBufferSize));

    /// <summary>The inner pool is the dispatcher's; it is not this wrapper's to dispose.</summary>
    protected override void Dispose(bool disposing)
    {
    }

    /// <summary>
    /// One block of the inner pool. Memory handed out by the pipe is built on this manager, so a send recovers the
    /// block from any slice of it (<c>MemoryMarshal.TryGetMemoryManager</c>).
    /// </summary>
    internal sealed class Block(IMemoryOwner<byte> owner) : MemoryManager<byte>
    {
        // The low bits count the holds; this bit is set once the pipe has given the block back. The block goes to
        // the inner pool on the transition to exactly this bit (given back, no hold left), whichever side makes it.
        private const int GivenBack = 1 << 30;

        private readonly Memory<byte> _memory = owner.Memory;
        private IMemoryOwner<byte>? _owner = owner;
        private int _state;

        public override Span<byte> GetSpan() => _memory.Span;

        public override MemoryHandle Pin(int elementIndex = 0) => _memory.Slice(elementIndex).Pin();

        public override void Unpin()
        {
            // The handle Pin returns is the inner memory's own: it unpins itself.
        }

        protected override bool TryGetArray(out ArraySegment<byte> segment) => MemoryMarshal.TryGetArray<byte>(_memory, out segment);

        /// <summary>
        /// A zero-copy send points into this block. Dispatcher thread, while the send's bytes are still unconsumed
        /// in the pipe, so the block cannot have been given back yet.
        /// </summary>
        public void AddHold() => Interlocked.Increment(ref _state);

        /// <summary>The send's notification arrived: the kernel no longer reads this block for it.</summary>
        public void ReleaseHold()
        {
            if (Interlocked.Decrement(ref _state) == GivenBack)
            {
                ReturnToInner();
            }
        }

        /// <summary>The pipe gives the block back (any thread).</summary>
        protected override void Dispose(bool disposing)
        {
            int state = Volatile.Read(ref _state);
            while ((state & GivenBack) == 0)
            {
                int seen = Interlocked.CompareExchange(ref _state, state | GivenBack, state);
                if (seen == state)
                {
                    if (state == 0)
                    {
                        ReturnToInner();
                    }

                    return;
                }

                state = seen;
            }
        }

        private void ReturnToInner() => Interlocked.Exchange(ref _owner, null)?.Dispose();
    }
}
