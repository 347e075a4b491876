using System.Globalization;
using System.Net.Sockets;
using System.Text;

namespace KestrelProactor.Tests.EndToEnd;

/// <summary>
/// Just enough HTTP/1.1 over a bare socket for the tests that must control exactly when the client reads or
/// writes (HttpClient would buffer on its own). Reads a response head, then a Content-Length or chunked body.
/// </summary>
internal sealed class RawHttp(Socket socket)
{
    private readonly byte[] _buffer = new byte[16 * 1024];
    private int _start;
    private int _end;

    public async Task SendAsciiAsync(string text, CancellationToken cancellationToken)
    {
        byte[] bytes = Encoding.ASCII.GetBytes(text);
        for (int sent = 0; sent < bytes.Length;)
        {
            sent += await socket.SendAsync(bytes.AsMemory(sent), SocketFlags.None, cancellationToken);
        }
    }

    /// <summary>Reads the status line and headers; the body is left unread.</summary>
    public async Task<(string StatusLine, Dictionary<string, string> Headers)> ReadHeadAsync(CancellationToken cancellationToken)
    {
        string statusLine = await ReadLineAsync(cancellationToken);
        var headers = new Dictionary<string, string>(StringComparer.OrdinalIgnoreCase);
        string line;
        while ((line = await ReadLineAsync(cancellationToken)).Length > 0)
        {
            int colon = line.IndexOf(':');
            headers[line[..colon].Trim()] = line[(colon + 1)..].Trim();
        }

        return (statusLine, headers);
    }

    /// <summary>Reads a whole response, its body framed by Content-Length or chunked.</summary>
    public async Task<(string StatusLine, Dictionary<string, string> Headers, byte[] Body)> ReadResponseAsync(CancellationToken cancellationToken)
    {
        var (statusLine, headers) = await ReadHeadAsync(cancellationToken);
        using var body = new MemoryStream();
        if (headers.TryGetValue("Content-Length", out var contentLength))
        {
            await ReadExactlyAsync(body, long.Parse(contentLength, CultureInfo.InvariantCulture), cancellationToken);
        }
        else if (headers.TryGetValue("Transfer-Encoding", out var encoding) && encoding.Contains("chunked", StringComparison.OrdinalIgnoreCase))
        {
            long size;
            while ((size = long.Parse((await ReadLineAsync(cancellationToken)).Split(';')[0], NumberStyles.HexNumber, CultureInfo.InvariantCulture)) > 0)
            {
                await ReadExactlyAsync(body, size, cancellationToken);
                Assert.Equal("", await ReadLineAsync(cancellationToken));
            }

            // No trailers are expected: the last chunk is followed by an empty line.
            Assert.Equal("", await ReadLineAsync(cancellationToken));
        }

        return (statusLine, headers, body.ToArray());
    }

    private async Task<string> ReadLineAsync(CancellationToken cancellationToken)
    {
        var line = new StringBuilder();
        while (true)
        {
            if (_start == _end)
            {
                await FillAsync(cancellationToken);
            }

            byte b = _buffer[_start++];
            if (b == '\n')
            {
                return line.ToString().TrimEnd('\r');
            }

            line.Append((char)b);
            if (line.Length > 16 * 1024)
            {
                throw new IOException("A response line is longer than 16 KiB.");
            }
        }
    }

    private async Task ReadExactlyAsync(Stream destination, long count, CancellationToken cancellationToken)
    {
        while (count > 0)
        {
            if (_start == _end)
            {
                await FillAsync(cancellationToken);
            }

            int take = (int)Math.Min(count, _end - _start);
            destination.Write(_buffer, _start, take);
            _start += take;
            count -= take;
        }
    }

    private async Task FillAsync(CancellationToken cancellationToken)
    {
        int read = await socket.ReceiveAsync(_buffer.AsMemory(), SocketFlags.None, cancellationToken);
        if (read == 0)
        {
            throw new IOException("The server closed the connection in the middle of a response.");
        }

        _start = 0;
        _end = read;
    }
}
