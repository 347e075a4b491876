using System.Net;
using System.Net.Sockets;
using System.Text;

namespace KestrelProactor.Perf;

/// <summary>
/// Opens N connections and sends each a GET /plaintext head one byte per packet, round after round over all the
/// connections (so a connection's bytes are far apart on the wire), leaving its last header line unfinished: the
/// server holds every byte and never completes a request, which is what a slow-headers client makes it do. Then it
/// holds while the driver reads the server's RSS; released (a file appears, or the hold time runs out), it finishes
/// every head and checks every answer.
/// </summary>
internal static class TrickleConnections
{
    private const int ConnectParallelism = 128;

    public static async Task<int> RunAsync(ClientArguments options)
    {
        int port = options.GetInt32("port");
        int count = options.GetInt32("count");
        int length = options.GetInt32("bytes", 1893);
        int roundDelayMs = options.GetInt32("round-delay-ms", 1);
        int holdSeconds = options.GetInt32("hold-seconds", 120);
        string? releaseFile = options.GetString("release-file");
        var endpoint = new IPEndPoint(IPAddress.Loopback, port);
        byte[] head = Head(length);

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
                    sockets[i] = socket;
                }
                catch (Exception e) when (e is SocketException or OperationCanceledException)
                {
                    errors.Add("open", e);
                    socket.Dispose();
                }
            });
        }

        // Round i sends byte i to every connection: each connection's bytes are a round apart, separate packets
        // that the server receives one at a time. A blocking send per byte is the cheapest way to make packets.
        var started = DateTime.UtcNow;
        for (int i = 0; i < head.Length; i++)
        {
            for (int c = 0; c < count; c++)
            {
                if (sockets[c] is not Socket socket)
                {
                    continue;
                }

                try
                {
                    socket.Send(head, i, 1, SocketFlags.None);
                }
                catch (SocketException e)
                {
                    errors.Add("trickle", e);
                    socket.Dispose();
                    sockets[c] = null;
                }
            }

            if (roundDelayMs > 0)
            {
                Thread.Sleep(roundDelayMs);
            }
        }

        int open = sockets.Count(s => s is not null);
        Console.WriteLine(
            $"TRICKLE-READY open={open} requested={count} bytesPerConnection={head.Length} " +
            $"seconds={(DateTime.UtcNow - started).TotalSeconds:F1} errors={errors.Count} firstError=\"{errors.First}\"");

        var holdUntil = DateTime.UtcNow.AddSeconds(holdSeconds);
        while (DateTime.UtcNow < holdUntil && (releaseFile is null || !File.Exists(releaseFile)))
        {
            await Task.Delay(50);
        }

        int answered = 0;
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
                    // The end of the unfinished header line, and of the head: now the request is complete.
                    await socket.SendAsync("\r\n\r\n"u8.ToArray(), SocketFlags.None, checkTimeout.Token);
                    await IdleConnections.ReadPlaintextResponseAsync(socket, checkTimeout.Token);
                    Interlocked.Increment(ref answered);
                }
                catch (Exception e) when (e is SocketException or IOException or InvalidDataException or OperationCanceledException)
                {
                    errors.Add("finish", e);
                }
                finally
                {
                    socket.Dispose();
                }
            });
        }

        Console.WriteLine($"TRICKLE-DONE answered={answered} requested={count} errors={errors.Count} firstError=\"{errors.First}\"");
        return answered == count && errors.Count == 0 ? 0 : 1;
    }

    /// <summary>A head of exactly <paramref name="length"/> bytes whose last header line is left unfinished.</summary>
    private static byte[] Head(int length)
    {
        string start = "GET /plaintext HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Trickle: ";
        if (length <= start.Length)
        {
            throw new ArgumentException($"--bytes must be more than {start.Length}");
        }

        return Encoding.ASCII.GetBytes(start + new string('a', length - start.Length));
    }
}
