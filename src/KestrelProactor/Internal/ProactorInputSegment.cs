using System.Buffers;

namespace KestrelProactor.Internal;

/// <summary>
/// One segment of <see cref="ProactorInputPipe"/>: a receive buffer the backend lent (the kernel filled it) or a
/// pool block the pipe copied received bytes into. The room after <see cref="Length"/> is free: the pipe appends
/// later small receives there, so a trickle of tiny packets fills one buffer instead of taking one each.
/// </summary>
internal sealed class ProactorInputSegment : ReadOnlySequenceSegment<byte>
{
    private IMemoryOwner<byte>? _owner;
    private Memory<byte> _buffer;

    /// <summary>The lent buffer's id; -1 for a pool block.</summary>
    public int BufferId { get; private set; } = -1;

    public bool IsLent => BufferId >= 0;

    /// <summary>
    /// The pipe whose chain holds this segment; null once consumed (a segment is never reused). A position whose
    /// segment is not in its pipe's chain is stale: its bytes were consumed and its memory may hold other data now.
    /// </summary>
    public ProactorInputPipe? Pipe { get; private set; }

    /// <summary>Bytes the reader may see.</summary>
    public int Length => Memory.Length;

    /// <summary>Free room after the bytes.</summary>
    public int Available => _buffer.Length - Memory.Length;

    /// <summary>The pipe-wide index just after this segment's last byte.</summary>
    public long End => RunningIndex + Memory.Length;

    /// <summary>Links segments being released, apart from the sequence links the reader follows.</summary>
    public ProactorInputSegment? NextInChain { get; set; }

    public ProactorInputSegment? NextSegment => (ProactorInputSegment?)Next;

    /// <summary>Takes lent buffer <paramref name="bufferId"/>, whose first <paramref name="length"/> bytes the kernel filled.</summary>
    public void SetLent(int bufferId, Memory<byte> buffer, int length)
    {
        BufferId = bufferId;
        _buffer = buffer;
        Memory = buffer[..length];
    }

    /// <summary>Takes an empty pool block.</summary>
    public void SetOwned(IMemoryOwner<byte> owner)
    {
        _owner = owner;
        BufferId = -1;
        _buffer = owner.Memory;
        Memory = default;
    }

    /// <summary>Copies as much of <paramref name="data"/> as fits into the free room; returns how much.</summary>
    public int Append(ReadOnlySpan<byte> data)
    {
        int length = Memory.Length;
        int count = Math.Min(data.Length, _buffer.Length - length);
        data[..count].CopyTo(_buffer.Span[length..]);
        // Only the length grows, after the bytes are in place: a reader reading Memory at the same time sees the
        // same memory and either length, both at least the end of any sequence it was given.
        Memory = _buffer[..(length + count)];
        return count;
    }

    /// <summary>Makes the segment part of <paramref name="pipe"/>'s chain, starting at pipe-wide index <paramref name="runningIndex"/>.</summary>
    public void Link(ProactorInputPipe pipe, long runningIndex)
    {
        Pipe = pipe;
        RunningIndex = runningIndex;
    }

    public void SetNext(ProactorInputSegment next) => Next = next;

    /// <summary>Takes the segment out of its pipe's chain (under the pipe's lock): positions into it are stale from now on.</summary>
    public void Detach() => Pipe = null;

    /// <summary>Gives a pool block back and drops every reference. A lent buffer is the pipe's to return first.</summary>
    public void Reset()
    {
        _owner?.Dispose();
        _owner = null;
        BufferId = -1;
        _buffer = default;
        Memory = default;
        Next = null;
        RunningIndex = 0;
        Pipe = null;
    }
}
