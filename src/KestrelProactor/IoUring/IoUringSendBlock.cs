using System.Buffers;
using System.Runtime.InteropServices;
using KestrelProactor.Internal;
using static KestrelProactor.Interop.Linux.Interop;

namespace KestrelProactor.IoUring;

/// <summary>
/// What one gathered send needs while the kernel works on it: a msghdr and iovec array in native memory (the
/// kernel reads them at submission and, for a retried send, later) and pins on every segment. Rented from the
/// dispatcher's pool for one send, so an idle connection holds none.
/// <para>
/// A zero-copy send also holds every pool block it points into (<see cref="IoUringZeroCopyPool.Block"/>) and
/// outlives its result: the connection is told the result and goes on, while the block keeps the pins and the
/// holds until the notification says the kernel let go of the pages.
/// </para>
/// </summary>
internal sealed unsafe class IoUringSendBlock : IDisposable
{
    /// <summary>Segments per send; a longer sequence is sent in several sends, like any partial completion.</summary>
    public const int MaxSegments = 64;

    private readonly MemoryHandle[] _pins = new MemoryHandle[MaxSegments];
    private readonly IoUringZeroCopyPool.Block?[] _holds = new IoUringZeroCopyPool.Block?[MaxSegments];
    private int _pinCount;
    private int _holdCount;

    public IoUringSendBlock(int index)
    {
        Index = index;
        Native = (byte*)NativeMemory.AllocZeroed((nuint)(sizeof(Sys.msghdr) + MaxSegments * sizeof(Sys.iovec)));
    }

    /// <summary>This block's place in its dispatcher's list of blocks: a zero-copy send's user data names it.</summary>
    public int Index { get; }

    /// <summary>Bytes the prepared send covers.</summary>
    public long Length { get; private set; }

    /// <summary>What the send was prepared from (its pipe's bytes stay unconsumed until the send's result).</summary>
    public ReadOnlySequence<byte> Buffer { get; private set; }

    /// <summary>The connection the send is for, and its operation token's user data for a send.</summary>
    public ProactorConnection? Connection { get; set; }

    public ulong OwnerUserData { get; set; }

    /// <summary>A zero-copy send's result, and its notification, have arrived (in either order).</summary>
    public bool ResultArrived { get; set; }

    public bool NotificationArrived { get; set; }

    /// <summary>True while the prepared send is a zero-copy one (its own user data, holds on its blocks).</summary>
    public bool IsZeroCopy => _holdCount != 0;

    private byte* Native { get; set; }

    public Sys.msghdr* Header => (Sys.msghdr*)Native;

    private Sys.iovec* Vectors => (Sys.iovec*)(Native + sizeof(Sys.msghdr));

    /// <summary>Pins up to <see cref="MaxSegments"/> segments and fills the iovecs. Returns the segment count.</summary>
    public int Prepare(in ReadOnlySequence<byte> buffer, out void* firstAddress, out int firstLength)
    {
        int count = 0;
        firstAddress = null;
        firstLength = 0;
        foreach (ReadOnlyMemory<byte> segment in buffer)
        {
            if (segment.IsEmpty)
            {
                continue;
            }

            if (count == MaxSegments)
            {
                break;
            }

            MemoryHandle pin = segment.Pin();
            _pins[count] = pin;
            Vectors[count].iov_base = pin.Pointer;
            Vectors[count].iov_len = (nuint)segment.Length;
            if (count == 0)
            {
                firstAddress = pin.Pointer;
                firstLength = segment.Length;
            }

            count++;
        }

        _pinCount = count;
        long length = 0;
        for (int i = 0; i < count; i++)
        {
            length += (long)Vectors[i].iov_len;
        }

        Length = length;
        Buffer = buffer;
        *Header = default;
        Header->msg_iov = Vectors;
        Header->msg_iovlen = (nuint)count;
        return count;
    }

    /// <summary>
    /// Makes the prepared send a zero-copy one: holds every block it points into. False, holding nothing, when a
    /// segment is not from a pool block that can be held (the pipe serves requests larger than a block from
    /// elsewhere): such a send must copy.
    /// </summary>
    public bool TryHoldForZeroCopy()
    {
        int count = 0;
        foreach (ReadOnlyMemory<byte> segment in Buffer)
        {
            if (segment.IsEmpty)
            {
                continue;
            }

            if (count == _pinCount)
            {
                break;
            }

            if (!MemoryMarshal.TryGetMemoryManager(segment, out IoUringZeroCopyPool.Block? block))
            {
                Array.Clear(_holds, 0, count);
                return false;
            }

            _holds[count++] = block;
        }

        for (int i = 0; i < count; i++)
        {
            _holds[i]!.AddHold();
        }

        _holdCount = count;
        return count != 0;
    }

    /// <summary>Unpins, and releases the holds, once the kernel is done with the memory.</summary>
    public void Release()
    {
        for (int i = 0; i < _pinCount; i++)
        {
            _pins[i].Dispose();
            _pins[i] = default;
        }

        for (int i = 0; i < _holdCount; i++)
        {
            _holds[i]!.ReleaseHold();
            _holds[i] = null;
        }

        _pinCount = 0;
        _holdCount = 0;
        Buffer = default;
        Connection = null;
        OwnerUserData = 0;
        ResultArrived = false;
        NotificationArrived = false;
    }

    public void Dispose()
    {
        Release();
        if (Native is not null)
        {
            NativeMemory.Free(Native);
            Native = null;
        }
    }
}
