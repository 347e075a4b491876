using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text;

namespace KestrelProactor.Perf;

/// <summary>
/// Moves N bytes of <see cref="DownloadPattern"/> over one HTTP/1.1 connection and checks them: a download is
/// compared byte for byte with the pattern as it arrives, an upload is compared with it by the server's /verify,
/// which must answer "match N". Done in-process because curl piped into sha256sum measured the pipe and the hash
/// (about 200 MiB/s here), not the transport.
/// </summary>
internal static class Transfer
{
    private const int ReceiveBufferSize = 256 * 1024;

    public static async Task<int> RunAsync(ClientArguments options)
    {
        string mode = options.GetString("mode") ?? throw new ArgumentException("--mode upload|download is required");
        int port = options.GetInt32("port");
        long total = options.GetInt64("bytes");
        int timeoutSeconds = options.GetInt32("timeout-seconds", 300);
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(timeoutSeconds));
        using var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };

        string result;
        bool ok;
        double seconds = 0;
        try
        {
            await socket.ConnectAsync(new IPEndPoint(IPAddress.Loopback, port), timeout.Token);
            (ok, result, seconds) = mode switch
            {
                "download" => await DownloadAsync(socket, total, timeout.Token),
                "upload" => await UploadAsync(socket, total, timeout.Token),
                _ => throw new ArgumentException($"--mode must be upload or download, not '{mode}'"),
            };
        }
        catch (Exception e) when (e is SocketException or IOException or InvalidDataException or OperationCanceledException)
        {
            ok = false;
            result = $"{e.GetType().Name}: {e.Message}";
        }

        double mibPerSecond = seconds > 0 ? total / 1048576.0 / seconds : 0;
        Console.WriteLine($"TRANSFER-DONE mode={mode} bytes={total} seconds={seconds:F3} mibPerSec={mibPerSecond:F1} ok={ok} detail=\"{result.Replace('"', '\'')}\"");
        return ok ? 0 : 1;
    }

    private static async Task<(bool Ok, string Detail, double Seconds)> DownloadAsync(Socket socket, long total, CancellationToken cancellationToken)
    {
        var stopwatch = Stopwatch.StartNew();
        await socket.SendAsync(Encoding.ASCII.GetBytes($"GET /bytes/{total} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"), SocketFlags.None, cancellationToken);
        byte[] buffer = new byte[ReceiveBufferSize];
        var (status, contentLength, bodyStart, filled) = await ReadHeadAsync(socket, buffer, cancellationToken);
        if (status != 200 || contentLength != total)
        {
            return (false, $"status {status}, Content-Length {contentLength}, expected 200 and {total}", stopwatch.Elapsed.TotalSeconds);
        }

        long received = 0;
        long firstMismatch = -1;
        int pending = filled - bodyStart;
        int offset = bodyStart;
        while (true)
        {
            if (pending > 0)
            {
                if (received + pending > total)
                {
                    return (false, $"more than the {total} bytes announced", stopwatch.Elapsed.TotalSeconds);
                }

                if (firstMismatch < 0)
                {
                    firstMismatch = FindMismatch(buffer.AsSpan(offset, pending), received);
                }

                received += pending;
            }

            if (received == total)
            {
                break;
            }

            pending = await socket.ReceiveAsync(buffer, SocketFlags.None, cancellationToken);
            offset = 0;
            if (pending == 0)
            {
                return (false, $"the server closed the connection after {received} of {total} bytes", stopwatch.Elapsed.TotalSeconds);
            }
        }

        double seconds = stopwatch.Elapsed.TotalSeconds;
        return firstMismatch >= 0
            ? (false, $"byte {firstMismatch} differs from the pattern", seconds)
            : (true, $"all {total} bytes match the pattern", seconds);
    }

    private static async Task<(bool Ok, string Detail, double Seconds)> UploadAsync(Socket socket, long total, CancellationToken cancellationToken)
    {
        // The send buffer is whole periods of the pattern, so sending it back to back keeps the sequence.
        byte[] block = DownloadPattern.Block;
        byte[] send = new byte[block.Length * 16];
        for (int i = 0; i < 16; i++)
        {
            block.CopyTo(send, i * block.Length);
        }

        var stopwatch = Stopwatch.StartNew();
        await socket.SendAsync(Encoding.ASCII.GetBytes(
            $"POST /verify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\nContent-Length: {total}\r\n\r\n"),
            SocketFlags.None, cancellationToken);
        for (long sent = 0; sent < total;)
        {
            int chunk = (int)Math.Min(send.Length, total - sent);
            sent += await socket.SendAsync(send.AsMemory(0, chunk), SocketFlags.None, cancellationToken);
        }

        byte[] buffer = new byte[4096];
        var (status, contentLength, bodyStart, filled) = await ReadHeadAsync(socket, buffer, cancellationToken);
        while (filled < bodyStart + contentLength)
        {
            int read = await socket.ReceiveAsync(buffer.AsMemory(filled), SocketFlags.None, cancellationToken);
            filled += read > 0 ? read : throw new IOException("the server closed the connection mid-response");
        }

        double seconds = stopwatch.Elapsed.TotalSeconds;
        string body = Encoding.ASCII.GetString(buffer, bodyStart, (int)contentLength).TrimEnd('\n');
        string want = $"match {total}";
        return status == 200 && body == want
            ? (true, "the server found every byte in place", seconds)
            : (false, $"status {status}, server answered '{body}', expected '{want}'", seconds);
    }

    /// <summary>Reads the status line and headers; returns the status, Content-Length and where the body starts.</summary>
    private static async Task<(int Status, long ContentLength, int BodyStart, int Filled)> ReadHeadAsync(Socket socket, byte[] buffer, CancellationToken cancellationToken)
    {
        int filled = 0;
        int headerEnd;
        while ((headerEnd = buffer.AsSpan(0, filled).IndexOf("\r\n\r\n"u8)) < 0)
        {
            if (filled == buffer.Length)
            {
                throw new InvalidDataException("response headers too large");
            }

            int read = await socket.ReceiveAsync(buffer.AsMemory(filled), SocketFlags.None, cancellationToken);
            filled += read > 0 ? read : throw new IOException("the server closed the connection before the response headers");
        }

        string[] lines = Encoding.ASCII.GetString(buffer, 0, headerEnd).Split("\r\n");
        string[] statusLine = lines[0].Split(' ');
        int status = statusLine.Length > 1 && int.TryParse(statusLine[1], out int s) ? s : -1;
        long contentLength = -1;
        foreach (string line in lines)
        {
            if (line.StartsWith("Content-Length:", StringComparison.OrdinalIgnoreCase))
            {
                contentLength = long.Parse(line.AsSpan(15).Trim());
            }
        }

        if (contentLength < 0 && status == 200)
        {
            throw new InvalidDataException("the response has no Content-Length");
        }

        return (status, Math.Max(contentLength, 0), headerEnd + 4, filled);
    }

    /// <summary>The offset of the first byte of <paramref name="data"/> (starting at absolute offset <paramref name="position"/>) that is not the pattern, or -1.</summary>
    private static long FindMismatch(ReadOnlySpan<byte> data, long position)
    {
        byte[] block = DownloadPattern.Block;
        long checkedBytes = 0;
        while (!data.IsEmpty)
        {
            int start = (int)((position + checkedBytes) % block.Length);
            int length = Math.Min(data.Length, block.Length - start);
            var expected = block.AsSpan(start, length);
            if (!data[..length].SequenceEqual(expected))
            {
                int i = 0;
                while (data[i] == expected[i])
                {
                    i++;
                }

                return position + checkedBytes + i;
            }

            data = data[length..];
            checkedBytes += length;
        }

        return -1;
    }
}
