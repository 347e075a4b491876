using System.Buffers;
using System.Net.Sockets;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using KestrelProactor.Dispatching;
using KestrelProactor.Internal;
using static KestrelProactor.Interop.Linux.Interop;

namespace KestrelProactor.IoUring;

/// <summary>
/// Direct sends (<see cref="ProactorTransportOptions.DirectSend"/>): a plain non-blocking <c>send</c>/<c>sendmsg</c>
/// made by the thread that flushed, not a ring operation, so the ring keeps its single submitter. The connection
/// makes sure that nothing else of it sends meanwhile and that its close waits (see
/// <c>ProactorConnection.DirectSend.cs</c>: the ring's close ignores the handle's reference count). The handle's
/// reference held here keeps a dispatcher's failure, which disposes the handle from its own thread, from closing the
/// descriptor under the call.
/// </summary>
internal sealed unsafe partial class IoUringDispatcher
{
    /// <summary>Segments gathered per <c>sendmsg</c>; a longer sequence takes another call once this one went out whole.</summary>
    private const int DirectSendSegments = 16;

    public override bool SupportsDirectSend => true;

    /// <summary>
    /// A test hook: runs on the flushing thread inside every direct send, with the handle's reference held, before
    /// the system call (a test holds a flusher there while the connection closes).
    /// </summary>
    internal static Action<ProactorConnection>? TestDirectSendHook { get; set; }

    public override bool TrySendDirect(ProactorConnection connection, in ReadOnlySequence<byte> buffer, out IoResult result)
    {
        if (WantsZeroCopy(connection, buffer.Length))
        {
            // The ring's zero-copy send is what the options ask for at this size.
            result = default;
            return false;
        }

        SafeHandle socket = connection.Socket;
        bool added = false;
        int calls = 0;
        try
        {
            // Throws when the handle is closed: the descriptor's number may be another file's by now.
            socket.DangerousAddRef(ref added);
            TestDirectSendHook?.Invoke(connection);
            result = Send(FdOf(socket), buffer, ref calls);
        }
        catch (ObjectDisposedException)
        {
            result = IoResult.Failure(SocketError.OperationAborted, Errno.ECANCELED, Errno.Name(Errno.ECANCELED));
        }
        finally
        {
            if (added)
            {
                socket.DangerousRelease();
            }
        }

        CountDirectSend(calls, result.IsSuccess ? result.Value : 0);

        return true;
    }

    /// <summary>
    /// Sends what the socket takes without waiting: the bytes sent, or the error when none were; <paramref name="calls"/>
    /// counts the system calls made.
    /// </summary>
    private static IoResult Send(int fd, in ReadOnlySequence<byte> buffer, ref int calls)
    {
        const int flags = Sys.MSG_NOSIGNAL | Sys.MSG_DONTWAIT;
        if (buffer.IsSingleSegment)
        {
            ReadOnlySpan<byte> span = buffer.FirstSpan;
            nint sent;
            calls++;
            fixed (byte* data = span)
            {
                sent = Sys.send(fd, data, (nuint)span.Length, flags);
            }

            return sent >= 0 ? IoResult.Success((int)sent) : LastError();
        }

        Sys.iovec* vectors = stackalloc Sys.iovec[DirectSendSegments];
        Pins pins = default;
        long total = 0;
        SequencePosition position = buffer.Start;
        bool more = true;
        while (more)
        {
            int count = 0;
            long attempted = 0;
            try
            {
                while (count < DirectSendSegments && attempted < int.MaxValue / 2 && buffer.TryGet(ref position, out ReadOnlyMemory<byte> segment))
                {
                    if (segment.IsEmpty)
                    {
                        continue;
                    }

                    pins[count] = segment.Pin();
                    vectors[count].iov_base = pins[count].Pointer;
                    vectors[count].iov_len = (nuint)segment.Length;
                    attempted += segment.Length;
                    count++;
                }

                more = count == DirectSendSegments && !position.Equals(buffer.End);
                if (count == 0)
                {
                    break;
                }

                Sys.msghdr header = default;
                header.msg_iov = vectors;
                header.msg_iovlen = (nuint)count;
                calls++;
                nint sent = Sys.sendmsg(fd, &header, flags);
                if (sent < 0)
                {
                    // Bytes already sent are the result; the error, if it lasts, comes back on the next send.
                    return total > 0 ? IoResult.Success((int)total) : LastError();
                }

                total += sent;
                if (sent < attempted)
                {
                    // The socket's buffer is full: the rest goes through the ring, which waits for room.
                    break;
                }
            }
            finally
            {
                for (int i = 0; i < count; i++)
                {
                    pins[i].Dispose();
                }
            }

            if (total >= int.MaxValue / 2)
            {
                break;
            }
        }

        return IoResult.Success((int)total);
    }

    private static IoResult LastError()
    {
        int errno = Marshal.GetLastPInvokeError();
        return IoResult.Failure(Errno.ToSocketError(errno), errno, Errno.Name(errno));
    }

    [InlineArray(DirectSendSegments)]
    private struct Pins
    {
        private MemoryHandle _first;
    }
}
