using System.Diagnostics;
using System.Net.WebSockets;

namespace KestrelProactor.Perf;

/// <summary>
/// Opens C WebSocket connections to /ws and sends M messages of B bytes on each, checking every echo byte for
/// byte. Prints messages/s; any mismatch or failure is an error.
/// </summary>
internal static class WebSocketEcho
{
    public static async Task<int> RunAsync(ClientArguments options)
    {
        int port = options.GetInt32("port");
        int connections = options.GetInt32("connections", 16);
        int messages = options.GetInt32("messages", 1000);
        int size = options.GetInt32("size", 128);
        int timeoutSeconds = options.GetInt32("timeout-seconds", 60);
        var uri = new Uri($"ws://127.0.0.1:{port}/ws");
        var errors = new ErrorTally();
        long echoed = 0;

        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(timeoutSeconds));
        var stopwatch = Stopwatch.StartNew();
        await Parallel.ForAsync(0, connections, new ParallelOptions { MaxDegreeOfParallelism = connections }, async (c, _) =>
        {
            try
            {
                using var socket = new ClientWebSocket();
                await socket.ConnectAsync(uri, timeout.Token);
                byte[] sent = new byte[size];
                byte[] received = new byte[size];
                for (int m = 0; m < messages; m++)
                {
                    for (int i = 0; i < sent.Length; i++)
                    {
                        sent[i] = (byte)(c + m + i);
                    }

                    await socket.SendAsync(sent, WebSocketMessageType.Binary, endOfMessage: true, timeout.Token);
                    int filled = 0;
                    ValueWebSocketReceiveResult result;
                    do
                    {
                        result = await socket.ReceiveAsync(received.AsMemory(filled), timeout.Token);
                        filled += result.Count;
                    }
                    while (!result.EndOfMessage && filled < received.Length);

                    if (!result.EndOfMessage || filled != size || !received.AsSpan().SequenceEqual(sent))
                    {
                        throw new InvalidDataException($"echo {m} on connection {c} differs from what was sent ({filled} bytes)");
                    }

                    Interlocked.Increment(ref echoed);
                }

                await socket.CloseAsync(WebSocketCloseStatus.NormalClosure, null, timeout.Token);
            }
            catch (Exception e) when (e is WebSocketException or IOException or InvalidDataException or OperationCanceledException)
            {
                errors.Add("ws", e);
            }
        });

        double seconds = stopwatch.Elapsed.TotalSeconds;
        long expected = (long)connections * messages;
        Console.WriteLine($"WS-DONE echoed={echoed} expected={expected} seconds={seconds:F3} msgPerSec={echoed / seconds:F0} errors={errors.Count} firstError=\"{errors.First}\"");
        return echoed == expected && errors.Count == 0 ? 0 : 1;
    }
}
