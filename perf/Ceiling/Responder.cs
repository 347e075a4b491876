using System.Runtime.InteropServices;
using System.Text;
using static KestrelProactor.Perf.Ceiling.Native;

namespace KestrelProactor.Perf.Ceiling;

/// <summary>
/// One thread, level-triggered epoll, non-blocking sockets: every complete request head "GET /plaintext ..." gets
/// the same 200 response Kestrel sends for /plaintext, pipelined heads get their answers in one send. Nothing else
/// happens per request, so what it reaches is what the load generator, the kernel and loopback allow.
/// </summary>
internal sealed unsafe class Responder
{
    private const int ReceiveCapacity = 64 * 1024;
    private const int MaxHeadBytes = 8 * 1024;
    private const int MaxEvents = 256;

    private readonly int _listener;
    private readonly int _epoll;
    private readonly byte* _receive = (byte*)NativeMemory.Alloc(ReceiveCapacity);
    private readonly byte* _events = (byte*)NativeMemory.Alloc((nuint)(MaxEvents * EventSize));
    // The response repeated back to back: any stretch of a pipelined answer is one pointer into it, no copy.
    private readonly byte* _responses;
    private readonly int _responseLength;
    private readonly int _responsesSpan;
    private Connection?[] _connections = new Connection?[1024];
    private volatile bool _stopping;

    public Responder(int port)
    {
        string date = DateTime.UtcNow.ToString("r", System.Globalization.CultureInfo.InvariantCulture);
        byte[] response = Encoding.ASCII.GetBytes(
            $"HTTP/1.1 200 OK\r\nContent-Length: 13\r\nContent-Type: text/plain\r\nDate: {date}\r\n\r\nHello, World!");
        _responseLength = response.Length;
        int copies = (ReceiveCapacity / _responseLength) + 2;
        _responsesSpan = (copies - 1) * _responseLength;
        _responses = (byte*)NativeMemory.Alloc((nuint)(copies * _responseLength));
        for (int i = 0; i < copies; i++)
        {
            response.CopyTo(new Span<byte>(_responses + (i * _responseLength), _responseLength));
        }

        _listener = ListenLoopback(port);
        _epoll = epoll_create1(EPOLL_CLOEXEC);
        Check(_epoll, "epoll_create1");
        Check(EpollControl(_epoll, EPOLL_CTL_ADD, _listener, EPOLLIN), "epoll_ctl(listener)");
    }

    public void Stop() => _stopping = true;

    public void Run()
    {
        while (!_stopping)
        {
            // A bounded wait, so a stop request is seen within half a second even with no traffic.
            int ready = epoll_wait(_epoll, _events, MaxEvents, 500);
            if (ready < 0)
            {
                if (Errno == EINTR) { continue; }
                Check(ready, "epoll_wait");
            }

            for (int i = 0; i < ready; i++)
            {
                int fd = EventDescriptor(_events, i);
                uint flags = EventFlags(_events, i);
                if (fd == _listener) { AcceptAll(); continue; }
                var connection = _connections[fd];
                if (connection is null) { continue; }
                if ((flags & (EPOLLERR | EPOLLHUP)) != 0) { Close(connection); continue; }
                if ((flags & EPOLLOUT) != 0 && !Flush(connection)) { continue; }
                if ((flags & EPOLLIN) != 0 && connection.PendingBytes == 0) { Serve(connection); }
            }
        }

        for (int fd = 0; fd < _connections.Length; fd++)
        {
            if (_connections[fd] is { } connection) { Close(connection); }
        }

        close(_listener);
        close(_epoll);
    }

    private void AcceptAll()
    {
        while (true)
        {
            int fd = accept4(_listener, null, null, SOCK_NONBLOCK | SOCK_CLOEXEC);
            if (fd < 0)
            {
                int errno = Errno;
                if (errno is EAGAIN or EINTR) { return; }
                Console.Error.WriteLine($"ceiling: accept4 failed: errno {errno}");
                return;
            }

            // Kestrel sets TCP_NODELAY on every connection; the ceiling must not win by coalescing segments.
            int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(int));
            if (fd >= _connections.Length) { Array.Resize(ref _connections, Math.Max(fd + 1, _connections.Length * 2)); }
            _connections[fd] = new Connection(fd);
            if (EpollControl(_epoll, EPOLL_CTL_ADD, fd, EPOLLIN) < 0) { Close(_connections[fd]!); }
        }
    }

    /// <summary>Reads what has arrived, answers every complete head, keeps an unfinished one for the next read.</summary>
    private void Serve(Connection connection)
    {
        while (true)
        {
            int kept = connection.Partial.Length;
            connection.Partial.CopyTo(new Span<byte>(_receive, kept));
            nint received = recv(connection.Fd, _receive + kept, ReceiveCapacity - kept, 0);
            if (received <= 0)
            {
                if (received < 0 && Errno is EAGAIN or EINTR) { return; }
                Close(connection);   // 0: the peer closed; < 0: reset or another failure
                return;
            }

            var data = new ReadOnlySpan<byte>(_receive, kept + (int)received);
            long answers = 0;
            while (true)
            {
                int end = data.IndexOf("\r\n\r\n"u8);
                if (end < 0) { break; }
                if (!data.StartsWith("GET /plaintext "u8))
                {
                    // Only the plaintext request is served: anything else closes the connection, which the load
                    // generator counts as an error rather than as a response.
                    Close(connection);
                    return;
                }

                answers++;
                data = data[(end + 4)..];
            }

            if (data.Length > MaxHeadBytes) { Close(connection); return; }
            connection.Partial = data.IsEmpty ? [] : data.ToArray();
            connection.PendingBytes = answers * _responseLength;
            if (!Flush(connection)) { return; }
            // A short read means the socket is drained: the next readiness event says when there is more.
            if (received < ReceiveCapacity - kept) { return; }
        }
    }

    /// <summary>Sends what is owed; false when the connection was closed or the socket is full (then EPOLLOUT waits).</summary>
    private bool Flush(Connection connection)
    {
        while (connection.PendingBytes > 0)
        {
            int offset = (int)((_responseLength - (connection.PendingBytes % _responseLength)) % _responseLength);
            nint length = (nint)Math.Min(connection.PendingBytes, _responsesSpan);
            nint sent = send(connection.Fd, _responses + offset, length, MSG_NOSIGNAL);
            if (sent < 0)
            {
                int errno = Errno;
                if (errno == EINTR) { continue; }
                if (errno == EAGAIN)
                {
                    if (!connection.WaitingToWrite)
                    {
                        connection.WaitingToWrite = true;
                        EpollControl(_epoll, EPOLL_CTL_MOD, connection.Fd, EPOLLOUT);
                    }

                    return false;
                }

                Close(connection);
                return false;
            }

            connection.PendingBytes -= sent;
        }

        if (connection.WaitingToWrite)
        {
            connection.WaitingToWrite = false;
            EpollControl(_epoll, EPOLL_CTL_MOD, connection.Fd, EPOLLIN);
        }

        return true;
    }

    private void Close(Connection connection)
    {
        _connections[connection.Fd] = null;
        close(connection.Fd);   // closing also removes it from the epoll set
    }

    private sealed class Connection(int fd)
    {
        public int Fd { get; } = fd;
        public byte[] Partial { get; set; } = [];
        public long PendingBytes { get; set; }
        public bool WaitingToWrite { get; set; }
    }
}
