using System.Diagnostics;
using System.Net.Sockets;
using System.Text.Json;
using KestrelProactor.Tests.Infrastructure;

namespace KestrelProactor.Tests.EndToEnd;

/// <summary>
/// A peer that stops reading, or an app that stops reading, must stop the other side within a bounded amount of
/// buffering: the transport may hold its pipe thresholds plus what the kernel's socket buffers take, not 100 MiB.
/// </summary>
public sealed class BackPressureTests
{
    // 100 MiB natively; a quarter under Wine (TestHost.StressBytes), still more than twice the ceiling.
    private static readonly long HundredMiB = TestHost.StressBytes(100L * 1024 * 1024);

    // Kernel socket buffers on loopback (both ends) plus the pipes' thresholds stay well under this.
    private const long StallCeiling = 16L * 1024 * 1024;

    [Theory]
    [MemberData(nameof(TransportMatrix.All), MemberType = typeof(TransportMatrix))]
    public async Task Response_ClientStopsReading_AppWritesStallFarBelow100MiB(TransportKind kind, TransportEndpoint endpoint)
    {
        await using var server = await E2EServer.StartAsync(kind, endpoint);
        var cancellationToken = TestContext.Current.CancellationToken;
        using Socket socket = ClientSocket.For(server.EndPoint);
        // A small receive window (set before connect) so the client's own kernel buffer takes little.
        socket.ReceiveBufferSize = 64 * 1024;
        await socket.ConnectAsync(server.EndPoint, cancellationToken).DefaultTimeout();

        var http = new RawHttp(socket);
        await http.SendAsciiAsync($"GET /download?size={HundredMiB}&seed=5 HTTP/1.1\r\nHost: localhost\r\n\r\n", cancellationToken).DefaultTimeout();
        var (statusLine, headers) = await http.ReadHeadAsync(cancellationToken).DefaultTimeout();
        Assert.StartsWith("HTTP/1.1 200", statusLine);
        server.AssertServedByExpectedTransport(headers.GetValueOrDefault(E2EApp.TransportHeader));

        // From here on the client reads nothing.
        long stalledAt = await WaitForStallAsync(() => server.State.ResponseBytesFlushed, cancellationToken);

        TestContext.Current.TestOutputHelper?.WriteLine($"The app's flushes stalled after {stalledAt} bytes.");
        Assert.InRange(stalledAt, 1, StallCeiling);

        // Leaving unread data behind makes the close an RST, which ends the app's pending flush.
        socket.Close(0);
    }

    [Theory]
    [MemberData(nameof(TransportMatrix.All), MemberType = typeof(TransportMatrix))]
    public async Task Request_AppDoesNotRead_ClientSendsStallFarBelow100MiB_ThenCompleteOnRelease(TransportKind kind, TransportEndpoint endpoint)
    {
        await using var server = await E2EServer.StartAsync(kind, endpoint);
        var cancellationToken = TestContext.Current.CancellationToken;
        const int Seed = 6;
        string expectedSha = PatternData.Sha256Hex(HundredMiB, Seed);
        using Socket socket = ClientSocket.For(server.EndPoint);
        socket.SendBufferSize = 64 * 1024;
        await socket.ConnectAsync(server.EndPoint, cancellationToken).DefaultTimeout();

        var http = new RawHttp(socket);
        await http.SendAsciiAsync($"POST /hold HTTP/1.1\r\nHost: localhost\r\nContent-Length: {HundredMiB}\r\n\r\n", cancellationToken).DefaultTimeout();
        await server.State.HeldRequestArrived.Task.DefaultTimeout();

        long sent = 0;
        var sender = Task.Run(async () =>
        {
            var chunk = new byte[64 * 1024];
            for (long offset = 0; offset < HundredMiB;)
            {
                int count = (int)Math.Min(chunk.Length, HundredMiB - offset);
                PatternData.Fill(chunk.AsSpan(0, count), offset, Seed);
                for (int done = 0; done < count;)
                {
                    done += await socket.SendAsync(chunk.AsMemory(done, count - done), SocketFlags.None, cancellationToken);
                }

                offset += count;
                Interlocked.Add(ref sent, count);
            }
        }, cancellationToken);

        // The app has not read a byte: Kestrel's MaxRequestBufferSize, through the transport's MaxReadBufferSize,
        // must stop receiving, and then TCP stops the client.
        long stalledAt = await WaitForStallAsync(() => Interlocked.Read(ref sent), cancellationToken);
        TestContext.Current.TestOutputHelper?.WriteLine($"The client's sends stalled after {stalledAt} bytes.");
        Assert.InRange(stalledAt, 1, StallCeiling);
        Assert.False(sender.IsCompleted);

        server.State.ReleaseHeldRequest.TrySetResult();
        await sender.LongTimeout();
        var (statusLine, headers, body) = await http.ReadResponseAsync(cancellationToken).LongTimeout();

        Assert.StartsWith("HTTP/1.1 200", statusLine);
        server.AssertServedByExpectedTransport(headers.GetValueOrDefault(E2EApp.TransportHeader));
        var report = JsonSerializer.Deserialize<BodyReport>(body, JsonSerializerOptions.Web);
        Assert.NotNull(report);
        Assert.Equal(HundredMiB, report.Length);
        Assert.Equal(expectedSha, report.Sha256);
    }

    /// <summary>
    /// Polls a progress counter until it has not moved for a second, and returns where it stopped. Fails if it is
    /// still moving after 20 seconds: the other side is buffering without bound (or the stall never came).
    /// </summary>
    private static async Task<long> WaitForStallAsync(Func<long> progress, CancellationToken cancellationToken)
    {
        var quiet = TimeSpan.FromSeconds(1);
        var deadline = Stopwatch.StartNew();
        long last = progress();
        var unchangedSince = Stopwatch.StartNew();
        while (deadline.Elapsed < TimeSpan.FromSeconds(20))
        {
            await Task.Delay(100, cancellationToken);
            long now = progress();
            if (now != last)
            {
                last = now;
                unchangedSince.Restart();
            }
            else if (now > 0 && unchangedSince.Elapsed >= quiet)
            {
                return now;
            }
        }

        Assert.Fail($"The counter was still moving after 20 s, at {last} bytes.");
        return last;
    }
}
