using System.Buffers;
using System.Runtime.InteropServices;
using static KestrelProactor.Interop.Linux.Interop;

namespace KestrelProactor.IoUring;

/// <summary>
/// What one gathered send needs while the kernel works on it: a msghdr and iovec array in native memory (the
/// kernel reads them at submission and, for a retried send, later) and pins on every segment. Rented from the
/// dispatcher's pool for one send, so an idle connection holds none.
/// </summary>
internal sealed unsafe class IoUringSendBlock : IDisposable
{
    /// <summary>Segments per send; a longer sequence is sent in several sends, like any partial completion.</summary>
    public const int MaxSegments = 64;

    private readonly MemoryHandle[] _pins = new MemoryHandle[MaxSegments];
    private int _pinCount;

    /// <summary>A zero-copy send's result, kept until its notification says the kernel let go of the memory.</summary>
    public int? PendingZeroCopyResult { get; set; }

    /// <summary>The send in flight is a zero-copy one: its pages are the socket's until the notification.</summary>
    public bool ZeroCopy { get; set; }

    /// <summary>Bytes the prepared send covers.</summary>
    public long Length { get; private set; }

    public IoUringSendBlock()
    {
        Native = (byte*)NativeMemory.AllocZeroed((nuint)(sizeof(Sys.msghdr) + MaxSegments * sizeof(Sys.iovec)));
    }

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
        PendingZeroCopyResult = null;
        *Header = default;
        Header->msg_iov = Vectors;
        Header->msg_iovlen = (nuint)count;
        return count;
    }

    /// <summary>Unpins after the send's completion.</summary>
    public void Release()
    {
        for (int i = 0; i < _pinCount; i++)
        {
            _pins[i].Dispose();
            _pins[i] = default;
        }

        _pinCount = 0;
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
