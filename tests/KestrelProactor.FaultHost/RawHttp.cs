using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text;

namespace KestrelProactor.FaultHost;

/// <summary>
/// A minimal HTTP/1.1 client on a socket of its own, so the run knows exactly which client port each request used
/// (a fault names the connection it touched by that port). Bodies are checked byte by byte as they arrive.
/// </summary>
internal sealed class RawHttp : IAsyncDisposable
{
    private readonly Socket _socket;
    private readonly byte[] _buffer = new byte[64 * 1024];
    private int _start;
    private int _end;

    private RawHttp(Socket socket)
    {
        _socket = socket;
        Port = ((IPEndPoint)socket.LocalEndPoint!).Port;
    }

    public int Port { get; }

    public static async Task<RawHttp> ConnectAsync(int port, Session session, CancellationToken cancellationToken)
    {
        var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        try
        {
            await socket.ConnectAsync(new IPEndPoint(IPAddress.Loopback, port), cancellationToken);
        }
        catch
        {
            socket.Dispose();
            throw;
        }

        var client = new RawHttp(socket);
        session.Used(client.Port);
        return client;
    }

    public async Task SendAsync(string head, ReadOnlyMemory<byte> body, CancellationToken cancellationToken)
    {
        await _socket.SendAsync(Encoding.ASCII.GetBytes(head), SocketFlags.None, cancellationToken);
        if (!body.IsEmpty)
        {
            await _socket.SendAsync(body, SocketFlags.None, cancellationToken);
        }
    }

    /// <summary>Reads one response's head; returns the status and the content length.</summary>
    public async Task<(int Status, long Length)> ReadHeadAsync(CancellationToken cancellationToken)
    {
        while (true)
        {
            int end = _buffer.AsSpan(_start, _end - _start).IndexOf("\r\n\r\n"u8);
            if (end >= 0)
            {
                string head = Encoding.ASCII.GetString(_buffer, _start, end);
                _start += end + 4;
                string[] lines = head.Split("\r\n");
                int status = int.Parse(lines[0].Split(' ')[1], CultureInfo.InvariantCulture);
                long length = -1;
                foreach (string line in lines.Skip(1))
                {
                    int colon = line.IndexOf(':');
                    if (colon > 0 && line[..colon].Trim().Equals("Content-Length", StringComparison.OrdinalIgnoreCase))
                    {
                        length = long.Parse(line[(colon + 1)..].Trim(), CultureInfo.InvariantCulture);
                    }
                }

                if (length < 0)
                {
                    throw new WrongBytesException($"response without a content length: {lines[0]}");
                }

                return (status, length);
            }

            await FillAsync(cancellationToken);
        }
    }

    /// <summary>Reads <paramref name="length"/> body bytes, each handed to <paramref name="check"/> with its offset.</summary>
    public async Task ReadBodyAsync(long length, Action<long, ReadOnlyMemory<byte>> check, CancellationToken cancellationToken)
    {
        long offset = 0;
        while (offset < length)
        {
            if (_start == _end)
            {
                await FillAsync(cancellationToken);
            }

            int count = (int)Math.Min(_end - _start, length - offset);
            check(offset, _buffer.AsMemory(_start, count));
            _start += count;
            offset += count;
        }
    }

    /// <summary>True when the peer ended the connection cleanly (EOF) with nothing more sent.</summary>
    public async Task<bool> ReadsEndAsync(CancellationToken cancellationToken)
    {
        if (_start != _end)
        {
            return false;
        }

        return await _socket.ReceiveAsync(_buffer, SocketFlags.None, cancellationToken) == 0;
    }

    /// <summary>An abortive close: the peer sees a reset.</summary>
    public void Reset()
    {
        _socket.LingerState = new LingerOption(true, 0);
        _socket.Dispose();
    }

    private async Task FillAsync(CancellationToken cancellationToken)
    {
        if (_start == _end)
        {
            _start = _end = 0;
        }
        else if (_end == _buffer.Length)
        {
            Buffer.BlockCopy(_buffer, _start, _buffer, 0, _end - _start);
            _end -= _start;
            _start = 0;
        }

        int n = await _socket.ReceiveAsync(_buffer.AsMemory(_end), SocketFlags.None, cancellationToken);
        if (n == 0)
        {
            throw new IOException("the server ended the connection");
        }

        _end += n;
    }

    public ValueTask DisposeAsync()
    {
        _socket.Dispose();
        return ValueTask.CompletedTask;
    }
}
