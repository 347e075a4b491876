using System.IO.Pipelines;
using System.Net;
using System.Net.Sockets;
using KestrelProactor.Dispatching;
using KestrelProactor.Internal;
using KestrelProactor.IoUring;
using KestrelProactor.Tests.Contract;
using KestrelProactor.Tests.Infrastructure;
using Microsoft.AspNetCore.Connections;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

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
        var logs = new CapturingLoggerFactory();
        await using ListenerHarness harness = await ListenerHarness.BindAsync(kind, loggerFactory: logs, configure: o =>
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
        // The operator hears of it: a Warning per episode of backlog, not one per pass.
        int warnings = logs.Entries.Count(e => e.EventId.Name == "CompletionQueueOverflow" && e.Level == LogLevel.Warning);
        Assert.InRange(warnings, 1, backlogs);
    }

    [Fact]
    public async Task ReceiveCompletionWhoseOwnerIsGone_ItsBufferGoesBack_TheLentCountStays()
    {
        // Arrange: a receive submitted for an owner the operation table does not hold (as one that left it would
        // be), on a socket pair outside the transport. Two buffers: a buffer lost or duplicated would show.
        await using ListenerHarness harness = await ListenerHarness.BindAsync(TransportKind.ProactorSingleShot, configure: o =>
        {
            o.DispatcherCount = 1;
            o.ReceiveBufferCount = 2;
        });
        var dispatcher = (IoUringDispatcher)((ProactorTransportFactory)harness.Factory).Backend!.Dispatchers.Single();
        using var listen = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listen.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listen.Listen();
        using var peer = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        await peer.ConnectAsync(listen.LocalEndPoint!).DefaultTimeout();
        using Socket accepted = await listen.AcceptAsync().DefaultTimeout();
        var gone = new ProactorConnection(dispatcher, accepted.SafeHandle, isTcp: true, null, null, NullLogger.Instance)
        {
            // A slot nobody holds (only the listener is registered, in slot 0) and a generation it never had.
            Token = new OperationToken(1, 0xBEEF),
        };
        await RunOnDispatcherAsync(dispatcher, () => dispatcher.SubmitReceive(gone));

        // Act
        await RawClient.SendAllAsync(peer, "stale"u8.ToArray());
        await WaitUntilAsync(() => dispatcher.StaleCompletions == 1);

        // Assert: the buffer went back without having been lent; the ring still serves a real connection.
        Assert.Equal(0, dispatcher.ReceiveBuffersLent);
        (Socket client, ConnectionContext connection) = await harness.ConnectAndAcceptAsync();
        Task echo = ServerPipes.EchoAsync(connection);
        byte[] payload = RawClient.CreatePayload(64 * 1024, seed: 70);
        Assert.Equal(payload, await RawClient.ExchangeAsync(client, payload));
        await echo.DefaultTimeout();
        await WaitUntilAsync(() => dispatcher.ReceiveBuffersLent == 0);
    }

    [Fact]
    public async Task DroppedCompletion_StopsThatDispatcher_ItsConnectionsEnd_TheOthersServe()
    {
        // Arrange: two dispatchers; a connection on the one that does not accept, so the endpoint lives on.
        await using ListenerHarness harness = await ListenerHarness.BindAsync(TransportKind.Proactor, configure: o => o.DispatcherCount = 2);
        ProactorDispatcher[] dispatchers = ((ProactorTransportFactory)harness.Factory).Backend!.Dispatchers;
        await WaitUntilAsync(() => dispatchers.Count(d => d.ConnectionCount > d.OpenConnections) == 1);
        ProactorDispatcher acceptor = dispatchers.Single(d => d.ConnectionCount > d.OpenConnections);
        ConnectionContext victim;
        do
        {
            (_, victim) = await harness.ConnectAndAcceptAsync();
        }
        while (((ProactorConnection)victim).Dispatcher == acceptor);

        var target = (IoUringDispatcher)((ProactorConnection)victim).Dispatcher;
        var closed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        victim.ConnectionClosed.Register(() => closed.TrySetResult());

        // Act: the kernel's dropped-completion counter moves, as when it had no memory to keep a completion.
        await RunOnDispatcherAsync(target, () => target.Ring.CountDroppedCompletionForTests());

        // Assert: which operation ended is unknown, so that ring is torn down and its connections released.
        await WaitUntilAsync(() => target.HasFailed);
        await target.Ended.DefaultTimeout();
        await closed.Task.DefaultTimeout();
        Assert.Equal(1, target.CompletionQueueOverflows);
        Assert.False(acceptor.HasFailed);
        (Socket client, ConnectionContext connection) = await harness.ConnectAndAcceptAsync();
        Assert.NotEqual<ProactorDispatcher>(target, ((ProactorConnection)connection).Dispatcher);
        Task echo = ServerPipes.EchoAsync(connection);
        byte[] payload = RawClient.CreatePayload(4096, seed: 71);
        Assert.Equal(payload, await RawClient.ExchangeAsync(client, payload));
        await echo.DefaultTimeout();
    }

    private static Task RunOnDispatcherAsync(ProactorDispatcher dispatcher, Action action)
    {
        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        dispatcher.Schedule(
            _ =>
            {
                try
                {
                    action();
                    done.TrySetResult();
                }
                catch (Exception ex)
                {
                    done.TrySetException(ex);
                }
            },
            null);
        return done.Task.DefaultTimeout();
    }

    private static async Task WaitUntilAsync(Func<bool> condition)
    {
        using var timeout = new CancellationTokenSource(TestTimeouts.Default);
        while (!condition())
        {
            await Task.Delay(10, timeout.Token);
        }
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
