using System.Net.Sockets;
using System.Text;

namespace KestrelProactor.Tests.EndToEnd;

/// <summary>
/// Just enough HTTP/1.1 over a bare socket for the tests that must control exactly when the client reads or
/// writes (HttpClient would buffer on its own).
/// </summary>
internal static class RawHttp
{
    public static async Task SendAsciiAsync(Socket socket, string text, CancellationToken cancellationToken)
    {
        byte[] bytes = Encoding.ASCII.GetBytes(text);
        for (int sent = 0; sent < bytes.Length;)
        {
            sent += await socket.SendAsync(bytes.AsMemory(sent), SocketFlags.None, cancellationToken);
        }
    }

    /// <summary>
    /// Reads until the end of the response head; returns the status line, the header lines, and any body bytes
    /// that arrived with the head.
    /// </summary>
    public static async Task<(string StatusLine, Dictionary<string, string> Headers, byte[] BodyStart)> ReadHeadAsync(
        Socket socket, CancellationToken cancellationToken)
    {
        var received = new List<byte>();
        var buffer = new byte[1024];
        while (true)
        {
            int read = await socket.ReceiveAsync(buffer, SocketFlags.None, cancellationToken);
            if (read == 0)
            {
                throw new IOException($"The server closed the connection before the end of the response head: '{Encoding.ASCII.GetString(received.ToArray())}'.");
            }

            received.AddRange(buffer.AsSpan(0, read));
            int end = IndexOfHeadEnd(received);
            if (end >= 0)
            {
                string head = Encoding.ASCII.GetString(received.GetRange(0, end).ToArray());
                string[] lines = head.Split("\r\n");
                var headers = new Dictionary<string, string>(StringComparer.OrdinalIgnoreCase);
                foreach (string line in lines.Skip(1))
                {
                    int colon = line.IndexOf(':');
                    headers[line[..colon].Trim()] = line[(colon + 1)..].Trim();
                }

                return (lines[0], headers, received.GetRange(end + 4, received.Count - end - 4).ToArray());
            }

            if (received.Count > 64 * 1024)
            {
                throw new IOException("The response head is larger than 64 KiB.");
            }
        }
    }

    /// <summary>Reads a whole Content-Length response.</summary>
    public static async Task<(string StatusLine, Dictionary<string, string> Headers, byte[] Body)> ReadResponseAsync(
        Socket socket, CancellationToken cancellationToken)
    {
        var (statusLine, headers, bodyStart) = await ReadHeadAsync(socket, cancellationToken);
        int length = int.Parse(headers["Content-Length"], System.Globalization.CultureInfo.InvariantCulture);
        var body = new byte[length];
        bodyStart.CopyTo(body, 0);
        for (int filled = bodyStart.Length; filled < length;)
        {
            int read = await socket.ReceiveAsync(body.AsMemory(filled), SocketFlags.None, cancellationToken);
            if (read == 0)
            {
                throw new IOException($"The server closed the connection after {filled} of {length} body bytes.");
            }

            filled += read;
        }

        return (statusLine, headers, body);
    }

    private static int IndexOfHeadEnd(List<byte> data)
    {
        for (int i = 3; i < data.Count; i++)
        {
            if (data[i - 3] == '\r' && data[i - 2] == '\n' && data[i - 1] == '\r' && data[i] == '\n')
            {
                return i - 3;
            }
        }

        return -1;
    }
}
