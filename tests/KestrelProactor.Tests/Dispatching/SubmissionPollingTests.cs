using System.Net.Sockets;
using KestrelProactor.Tests.Contract;
using KestrelProactor.Tests.EndToEnd;
using KestrelProactor.Tests.Infrastructure;
using Microsoft.AspNetCore.Connections;

namespace KestrelProactor.Tests.Dispatching;

/// <summary>
/// <see cref="ProactorTransportOptions.SubmissionQueuePolling"/>: a kernel thread takes the submissions, so the
/// dispatcher enters the ring only to wait or to wake that thread. Every path must still deliver every byte,
/// including the one where the thread has gone to sleep and the next submission has to wake it.
/// </summary>
public class SubmissionPollingTests
{
    [Theory]
    [InlineData(TransportKind.Proactor)]
    [InlineData(TransportKind.ProactorInline)]
    public async Task LargeEcho_WithSubmissionPolling_EveryByteArrivesInOrder_OnAPollingRing(TransportKind kind)
    {
        // Arrange
        await using ListenerHarness harness = await ListenerHarness.BindAsync(kind, configure: o => o.SubmissionQueuePolling = true);
        var factory = (ProactorTransportFactory)harness.Factory;
        (Socket client, ConnectionContext connection) = await harness.ConnectAndAcceptAsync();
        Task echo = ServerPipes.EchoAsync(connection);
        byte[] payload = RawClient.CreatePayload(8 * 1024 * 1024, seed: 21);

        // Act
        byte[] echoed = await RawClient.ExchangeAsync(client, payload).LongTimeout();
        await echo.DefaultTimeout();

        // Assert: the rings poll (the kernel's polling threads are this process's), and nothing was lost.
        Assert.Contains("SQPOLL(idle=10ms)", factory.Backend!.FeatureSummary.Split(", "));
        Assert.Contains(ThreadNames(), name => name.StartsWith("iou-sqp-", StringComparison.Ordinal));
        Assert.Equal(RawClient.Hash(payload), RawClient.Hash(echoed));
    }

    [Fact]
    public async Task Exchange_AfterThePollingThreadSlept_IsWokenAndServed()
    {
        // Arrange: a 1 ms idle time, so the polling thread is asleep after each pause below.
        await using ListenerHarness harness = await ListenerHarness.BindAsync(TransportKind.Proactor, configure: o =>
        {
            o.SubmissionQueuePolling = true;
            o.SubmissionQueuePollingIdle = TimeSpan.FromMilliseconds(1);
        });
        (Socket client, ConnectionContext connection) = await harness.ConnectAndAcceptAsync();
        Task echo = ServerPipes.EchoAsync(connection);

        // Act: exchanges separated by pauses far longer than the idle time; each needs the sleeping thread woken.
        for (int round = 0; round < 5; round++)
        {
            await Task.Delay(50, TestContext.Current.CancellationToken);
            byte[] payload = RawClient.CreatePayload(64 * 1024 + round, seed: 30 + round);
            Task<byte[]> receive = RawClient.ReceiveExactlyAsync(client, payload.Length);
            await RawClient.SendAllAsync(client, payload).DefaultTimeout();
            byte[] echoed = await receive.DefaultTimeout();

            // Assert
            Assert.Equal(RawClient.Hash(payload), RawClient.Hash(echoed));
        }

        client.Shutdown(SocketShutdown.Send);
        Assert.Empty(await RawClient.ReceiveToEndAsync(client).DefaultTimeout());
        await echo.DefaultTimeout();
    }

    [Fact]
    public async Task Http_ManyRequestsAndADownload_WithSubmissionPolling_AreServedInFull()
    {
        // Arrange
        await using var server = await E2EServer.StartAsync(TransportKind.Proactor, configureProactor: o => o.SubmissionQueuePolling = true);
        using HttpClient http = server.CreateHttpClient();
        var cancellationToken = TestContext.Current.CancellationToken;
        const long Size = 16L * 1024 * 1024;

        // Act: keep-alive requests on a few connections at once, then a download that streams 16 MiB.
        Task[] requests = Enumerable.Range(0, 8).Select(async _ =>
        {
            for (int i = 0; i < 25; i++)
            {
                using HttpResponseMessage response = await http.GetAsync("/hello", cancellationToken).DefaultTimeout();
                response.EnsureSuccessStatusCode();
                server.AssertServedByExpectedTransport(response);
            }
        }).ToArray();
        await Task.WhenAll(requests).LongTimeout();
        using HttpResponseMessage download = await http.GetAsync($"/download?size={Size}&seed=9", HttpCompletionOption.ResponseHeadersRead, cancellationToken).LongTimeout();
        await using Stream body = await download.Content.ReadAsStreamAsync(cancellationToken).DefaultTimeout();
        var (length, sha256) = await PatternData.HashStreamAsync(body, cancellationToken).LongTimeout();

        // Assert
        Assert.Equal(Size, length);
        Assert.Equal(PatternData.Sha256Hex(Size, 9), sha256);
    }

    private static string[] ThreadNames()
        => Directory.GetDirectories("/proc/self/task")
            .Select(task => { try { return File.ReadAllText(Path.Combine(task, "comm")).Trim(); } catch (IOException) { return string.Empty; } })
            .ToArray();
}
