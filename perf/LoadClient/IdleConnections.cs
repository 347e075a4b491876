using System.Net;
using System.Net.Sockets;
using System.Text;

namespace KestrelProactor.Perf;

/// <summary>
/// Opens N keep-alive connections, makes one GET /plaintext on each so the server has fully set the connection up,
/// then holds them idle while the driver reads the server's RSS. When released (a file appears, or the hold time
/// runs out) it makes a second request on every connection: a server that dropped idle connections fails here.
/// </summary>
internal static class IdleConnections
{
    private static readonly byte[] s_request = "GET /plaintext HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"u8.ToArray();
    private const string ExpectedBody = "Hello, World!";
    private const int ConnectParallelism = 128;

    public static async Task<int> RunAsync(ClientArguments options)
    {
        int port = options.GetInt32("port");
        int count = options.GetInt32("count");
        int holdSeconds = options.GetInt32("hold-seconds", 120);
        string? releaseFile = options.GetString("release-file");
        var endpoint = new IPEndPoint(IPAddress.Loopback, port);

        var sockets = new Socket?[count];
        var errors = new ErrorTally();
        using (var openTimeout = new CancellationTokenSource(TimeSpan.FromSeconds(120)))
        {
            await Parallel.ForAsync(0, count, new ParallelOptions { MaxDegreeOfParallelism = ConnectParallelism }, async (i, _) =>
            {
                var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
                try
                {
                    await socket.ConnectAsync(endpoint, openTimeout.Token);
                    await RoundTripAsync(socket, openTimeout.Token);
                    sockets[i] = socket;
                }
                catch (Exception e) when (e is SocketException or IOException or InvalidDataException or OperationCanceledException)
                {
                    errors.Add("open", e);
                    socket.Dispose();
                }
            });
        }

        int opened = sockets.Count(s => s is not null);
        Console.WriteLine($"IDLE-READY opened={opened} requested={count} errors={errors.Count} firstError=\"{errors.First}\"");

        var holdUntil = DateTime.UtcNow.AddSeconds(holdSeconds);
        while (DateTime.UtcNow < holdUntil && (releaseFile is null || !File.Exists(releaseFile)))
        {
            await Task.Delay(50);
        }

        int alive = 0;
        using (var checkTimeout = new CancellationTokenSource(TimeSpan.FromSeconds(120)))
        {
            await Parallel.ForAsync(0, count, new ParallelOptions { MaxDegreeOfParallelism = ConnectParallelism }, async (i, _) =>
            {
                if (sockets[i] is not Socket socket)
                {
                    return;
                }

                try
                {
                    await RoundTripAsync(socket, checkTimeout.Token);
                    Interlocked.Increment(ref alive);
                }
                catch (Exception e) when (e is SocketException or IOException or InvalidDataException or OperationCanceledException)
                {
                    errors.Add("recheck", e);
                }
                finally
                {
                    socket.Dispose();
                }
            });
        }

        Console.WriteLine($"IDLE-DONE alive={alive} opened={opened} requested={count} errors={errors.Count} firstError=\"{errors.First}\"");
        return alive == count && errors.Count == 0 ? 0 : 1;
    }

    /// <summary>Sends the GET and reads exactly one response, checking its status and body.</summary>
    private static async Task RoundTripAsync(Socket socket, CancellationToken cancellationToken)
    {
        await socket.SendAsync(s_request, SocketFlags.None, cancellationToken);
        await ReadPlaintextResponseAsync(socket, cancellationToken);
    }

    /// <summary>Reads exactly one response to GET /plaintext, checking its status and body.</summary>
    internal static async Task ReadPlaintextResponseAsync(Socket socket, CancellationToken cancellationToken)
    {
        byte[] buffer = new byte[1024];
        int filled = 0;
        int headerEnd;
        while ((headerEnd = buffer.AsSpan(0, filled).IndexOf("\r\n\r\n"u8)) < 0)
        {
            if (filled == buffer.Length)
            {
                throw new InvalidDataException("response headers larger than 1 KiB");
            }

            int read = await socket.ReceiveAsync(buffer.AsMemory(filled), SocketFlags.None, cancellationToken);
            filled += read > 0 ? read : throw new IOException("the server closed the connection");
        }

        string head = Encoding.ASCII.GetString(buffer, 0, headerEnd);
        if (!head.StartsWith("HTTP/1.1 200 ", StringComparison.Ordinal))
        {
            throw new InvalidDataException($"unexpected status line '{head.Split("\r\n")[0]}'");
        }

        int contentLength = ParseContentLength(head);
        int bodyStart = headerEnd + 4;
        while (filled < bodyStart + contentLength)
        {
            int read = await socket.ReceiveAsync(buffer.AsMemory(filled), SocketFlags.None, cancellationToken);
            filled += read > 0 ? read : throw new IOException("the server closed the connection mid-body");
        }

        string body = Encoding.ASCII.GetString(buffer, bodyStart, contentLength);
        if (body != ExpectedBody || filled != bodyStart + contentLength)
        {
            throw new InvalidDataException($"unexpected body '{body}' ({filled - bodyStart} bytes)");
        }
    }

    private static int ParseContentLength(string head)
    {
        foreach (string line in head.Split("\r\n"))
        {
            if (line.StartsWith("Content-Length:", StringComparison.OrdinalIgnoreCase) && int.TryParse(line.AsSpan(15).Trim(), out int length) && length <= 512)
            {
                return length;
            }
        }

        throw new InvalidDataException("no usable Content-Length in the response");
    }
}
