using System.IO.Pipelines;
using System.Net.Sockets;
using KestrelProactor.Internal;
using KestrelProactor.IoUring;
using KestrelProactor.Tests.Contract;
using KestrelProactor.Tests.EndToEnd;
using KestrelProactor.Tests.Infrastructure;
using Microsoft.AspNetCore.Connections;

namespace KestrelProactor.Tests.Dispatching;

/// <summary>
/// <see cref="ProactorTransportOptions.SubmissionQueuePolling"/>: a kernel thread takes the submissions, so the
/// dispatcher enters the ring only to wait or to wake that thread. Every path must still deliver every byte,
/// including the one where the thread has gone to sleep and the next submission has to wake it. One dispatcher
/// and a 1 ms idle time, and run alone: the polling threads spin, and would take CPU from timing-sensitive tests.
/// </summary>
[Collection(PollingCollection.Name)]
public class SubmissionPollingTests
{
    private static void Polling(ProactorTransportOptions options)
    {
        options.SubmissionQueuePolling = true;
        options.SubmissionQueuePollingIdle = TimeSpan.FromMilliseconds(1);
        options.DispatcherCount = 1;
    }

    [Theory]
    [InlineData(TransportKind.Proactor)]
    [InlineData(TransportKind.ProactorInline)]
    public async Task LargeEcho_WithSubmissionPolling_EveryByteArrivesInOrder_OnAPollingRing(TransportKind kind)
    {
        // Arrange
        await using ListenerHarness harness = await ListenerHarness.BindAsync(kind, configure: Polling);
        var factory = (ProactorTransportFactory)harness.Factory;
        (Socket client, ConnectionContext connection) = await harness.ConnectAndAcceptAsync();
        Task echo = ServerPipes.EchoAsync(connection);
        byte[] payload = RawClient.CreatePayload(8 * 1024 * 1024, seed: 21);

        // Act
        byte[] echoed = await RawClient.ExchangeAsync(client, payload).LongTimeout();
        await echo.DefaultTimeout();

        // Assert: the rings poll (the kernel's polling threads are this process's), and nothing was lost.
        Assert.Contains("SQPOLL(idle=1ms)", factory.Backend!.FeatureSummary.Split(", "));
        Assert.Contains(ThreadNames(), name => name.StartsWith("iou-sqp-", StringComparison.Ordinal));
        Assert.Equal(RawClient.Hash(payload), RawClient.Hash(echoed));
    }

    [Fact]
    public async Task Exchange_AfterThePollingThreadSlept_IsWokenAndServed()
    {
        // Arrange: inline scheduling, so the echo below runs on the dispatcher thread. Each completion wakes the
        // polling thread by itself; what must wake it here is a send submitted 20 ms after the receive that caused
        // it, when the thread (1 ms idle) has gone back to sleep.
        await using ListenerHarness harness = await ListenerHarness.BindAsync(TransportKind.ProactorInline, configure: Polling);
        (Socket client, ConnectionContext connection) = await harness.ConnectAndAcceptAsync();
        var dispatcher = (IoUringDispatcher)((ProactorConnection)connection).Dispatcher;
        long wakeupsBefore = dispatcher.SubmissionThreadWakeups;
        Task echo = SlowEchoAsync(connection, TimeSpan.FromMilliseconds(20));

        // Act
        for (int round = 0; round < 5; round++)
        {
            byte[] payload = RawClient.CreatePayload(1000 + round, seed: 30 + round);
            Task<byte[]> receive = RawClient.ReceiveExactlyAsync(client, payload.Length);
            await RawClient.SendAllAsync(client, payload).DefaultTimeout();
            byte[] echoed = await receive.DefaultTimeout();

            // Assert
            Assert.Equal(RawClient.Hash(payload), RawClient.Hash(echoed));
        }

        client.Shutdown(SocketShutdown.Send);
        Assert.Empty(await RawClient.ReceiveToEndAsync(client).DefaultTimeout());
        await echo.DefaultTimeout();
        Assert.True(dispatcher.SubmissionThreadWakeups > wakeupsBefore, "no submission had to wake the polling thread");
    }

    /// <summary>Echoes what arrives, blocking <paramref name="delay"/> first (on the dispatcher, with inline scheduling).</summary>
    private static async Task SlowEchoAsync(ConnectionContext connection, TimeSpan delay)
    {
        PipeReader input = connection.Transport.Input;
        PipeWriter output = connection.Transport.Output;
        while (true)
        {
            ReadResult result = await input.ReadAsync();
            if (!result.Buffer.IsEmpty)
            {
                Thread.Sleep(delay);
                foreach (ReadOnlyMemory<byte> segment in result.Buffer)
                {
                    await output.WriteAsync(segment);
                }
            }

            input.AdvanceTo(result.Buffer.End);
            if (result.IsCompleted)
            {
                break;
            }
        }

        await output.CompleteAsync();
        await input.CompleteAsync();
    }

    [Fact]
    public async Task Http_ManyRequestsAndADownload_WithSubmissionPolling_AreServedInFull()
    {
        // Arrange
        await using var server = await E2EServer.StartAsync(TransportKind.Proactor, configureProactor: Polling);
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
