using System.IO.Pipelines;
using System.Net.Sockets;
using KestrelProactor.Tests.Contract;
using KestrelProactor.Tests.Infrastructure;
using Microsoft.AspNetCore.Connections;

namespace KestrelProactor.Tests.Dispatching;

/// <summary>
/// The provided buffer ring under pressure: lent buffers are capped per connection and per dispatcher, and a
/// completion queue too small for the traffic overflows without losing a completion.
/// </summary>
public class BufferRingTests
{
    [Theory]
    [InlineData(TransportKind.Proactor)]
    [InlineData(TransportKind.ProactorInline)]
    [InlineData(TransportKind.ProactorSingleShot)]
    public async Task SlowConsumer_CannotPinTheRing_OtherConnectionsKeepReceiving(TransportKind kind)
    {
        // Arrange: one dispatcher with 16 buffers of 4 KiB; the slow connection may buffer up to 1 MiB.
        await using ListenerHarness harness = await ListenerHarness.BindAsync(kind, configure: o =>
        {
            o.DispatcherCount = 1;
            o.ReceiveBufferCount = 16;
            o.ReceiveBufferSize = 4096;
            o.MaxReadBufferSize = 1024 * 1024;
        });
        var factory = (ProactorTransportFactory)harness.Factory;
        (Socket slowClient, ConnectionContext slow) = await harness.ConnectAndAcceptAsync();
        byte[] flood = RawClient.CreatePayload(512 * 1024, seed: 3);

        // Act: the slow connection receives 512 KiB that nobody reads.
        Task floodSend = RawClient.SendAllAsync(slowClient, flood);
        await WaitUntilAsync(async () =>
        {
            // Peek without consuming: examined nothing, so back-pressure does not release.
            if (slow.Transport.Input.TryRead(out ReadResult peek))
            {
                long length = peek.Buffer.Length;
                slow.Transport.Input.AdvanceTo(peek.Buffer.Start);
                return length >= 256 * 1024;
            }

            await Task.Delay(20);
            return false;
        });

        // Assert: the slow reader holds its bytes, but not the ring.
        long lent = factory.Backend!.Dispatchers.Sum(d => d.ReceiveBuffersLent);
        Assert.InRange(lent, 0, 16 * 3 / 4);

        // Another connection on the same dispatcher still receives and echoes.
        (Socket fastClient, ConnectionContext fast) = await harness.ConnectAndAcceptAsync();
        Task echo = ServerPipes.EchoAsync(fast);
        byte[] payload = RawClient.CreatePayload(64 * 1024, seed: 4);
        byte[] echoed = await RawClient.ExchangeAsync(fastClient, payload);
        Assert.Equal(payload, echoed);
        fastClient.Shutdown(SocketShutdown.Send);
        await echo.DefaultTimeout();

        // The slow reader finally reads: every byte arrives, in order.
        byte[] received = await ServerPipes.ReadExactlyAsync(slow.Transport.Input, flood.Length);
        await floodSend.DefaultTimeout();
        Assert.Equal(RawClient.Hash(flood), RawClient.Hash(received));
    }

    [Theory]
    [InlineData(TransportKind.Proactor)]
    [InlineData(TransportKind.ProactorBasicTier)]
    public async Task CompletionQueueAsSmallAsSubmissionQueue_ManyConnections_AllEchoesIntact(TransportKind kind)
    {
        // Arrange: 4 SQEs and 4 CQEs for 32 busy connections: the CQ overflows and the kernel holds the rest.
        await using ListenerHarness harness = await ListenerHarness.BindAsync(kind, configure: o =>
        {
            o.DispatcherCount = 1;
            o.SubmissionQueueSize = 4;
            o.CompletionQueueSize = 4;
        });

        // Act
        var clients = new List<Task>();
        for (int i = 0; i < 32; i++)
        {
            int seed = i;
            (Socket client, ConnectionContext connection) = await harness.ConnectAndAcceptAsync();
            Task echo = ServerPipes.EchoAsync(connection);
            clients.Add(Task.Run(async () =>
            {
                byte[] payload = RawClient.CreatePayload(48 * 1024, seed);
                byte[] echoed = await RawClient.ExchangeAsync(client, payload);
                Assert.Equal(payload, echoed);
                client.Shutdown(SocketShutdown.Send);
                await echo.DefaultTimeout();
            }));
        }

        // Assert
        await Task.WhenAll(clients).LongTimeout();
        var dispatchers = ((ProactorTransportFactory)harness.Factory).Backend!.Dispatchers.OfType<KestrelProactor.IoUring.IoUringDispatcher>().ToArray();
        long backlogs = dispatchers.Sum(d => d.CompletionQueueBacklogs);
        TestContext.Current.TestOutputHelper?.WriteLine($"passes with a CQ backlog: {backlogs}");
        Assert.True(backlogs > 0, "the test meant to overflow the completion queue, and did not");
        Assert.Equal(0, dispatchers.Sum(d => d.CompletionQueueOverflows));
    }

    private static async Task WaitUntilAsync(Func<Task<bool>> condition)
    {
        using var timeout = new CancellationTokenSource(TestTimeouts.Default);
        while (!await condition())
        {
            timeout.Token.ThrowIfCancellationRequested();
        }
    }
}
