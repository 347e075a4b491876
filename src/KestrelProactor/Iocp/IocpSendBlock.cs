using System.Buffers;
using System.Runtime.InteropServices;
using static KestrelProactor.Interop.Windows.Interop;

namespace KestrelProactor.Iocp;

/// <summary>
/// What one gathered WSASend needs while it is in flight: pins on every segment and the WSABUF array (kept in
/// native memory until the completion, although Winsock captures it at the call). Rented from the dispatcher's
/// pool for one send, so an idle connection holds none.
/// </summary>
internal sealed unsafe class IocpSendBlock : IDisposable
{
    /// <summary>
    /// Buffers per WSASend. Wine fails a WSASend of more than 1024 buffers with WSAEMSGSIZE and still queues a
    /// packet; Windows accepts more. A longer sequence goes out in several sends, like any partial completion.
    /// </summary>
    public const int MaxBuffers = 1024;

    private const int InitialCapacity = 16;

    private MemoryHandle[] _pins = new MemoryHandle[InitialCapacity];
    private Winsock.WSABUF* _buffers = (Winsock.WSABUF*)NativeMemory.AllocZeroed((nuint)(InitialCapacity * sizeof(Winsock.WSABUF)));
    private int _capacity = InitialCapacity;
    private int _count;

    public Winsock.WSABUF* Buffers => _buffers;

    /// <summary>Pins up to <see cref="MaxBuffers"/> segments and fills the WSABUFs. Returns the buffer count.</summary>
    public int Prepare(in ReadOnlySequence<byte> sequence)
    {
        int count = 0;
        foreach (ReadOnlyMemory<byte> segment in sequence)
        {
            if (segment.IsEmpty)
            {
                continue;
            }

            if (count == MaxBuffers)
            {
                break;
            }

            if (count == _capacity)
            {
                Grow();
            }

            MemoryHandle pin = segment.Pin();
            _pins[count] = pin;
            _buffers[count].buf = (byte*)pin.Pointer;
            _buffers[count].len = (uint)segment.Length;
            count++;
        }

        _count = count;
        return count;
    }

    private void Grow()
    {
        int capacity = Math.Min(_capacity * 2, MaxBuffers);
        _buffers = (Winsock.WSABUF*)NativeMemory.Realloc(_buffers, (nuint)(capacity * sizeof(Winsock.WSABUF)));
        Array.Resize(ref _pins, capacity);
        _capacity = capacity;
    }

    /// <summary>Unpins after the send's completion.</summary>
    public void Release()
    {
        for (int i = 0; i < _count; i++)
        {
            _pins[i].Dispose();
            _pins[i] = default;
        }

        _count = 0;
    }

    public void Dispose()
    {
        Release();
        if (_buffers is not null)
        {
            NativeMemory.Free(_buffers);
            _buffers = null;
        }
    }
}
