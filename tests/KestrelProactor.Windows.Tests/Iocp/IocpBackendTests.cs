using System.Net.Sockets;
using KestrelProactor.Internal;
using KestrelProactor.Iocp;
using KestrelProactor.Dispatching;
using KestrelProactor.Tests.Contract;
using KestrelProactor.Tests.Infrastructure;
using Microsoft.AspNetCore.Connections;

namespace KestrelProactor.Windows.Tests.Iocp;

/// <summary>What only the IOCP backend does: these prove the Windows run went through completion ports.</summary>
public sealed class IocpBackendTests
{
    private static void SkipUnlessWindows() => Assert.SkipUnless(OperatingSystem.IsWindows(), "The IOCP backend exists only on Windows.");

    [Fact]
    public async Task BindAsync_OnWindows_UsesTheIocpBackend()
    {
        SkipUnlessWindows();
        await using ListenerHarness harness = await ListenerHarness.BindAsync(TransportKind.Proactor);
        (_, ConnectionContext connection) = await harness.ConnectAndAcceptAsync();

        var factory = Assert.IsType<ProactorTransportFactory>(harness.Factory);
        Assert.Equal("iocp", factory.ActiveBackend);
        Assert.Null(factory.FallbackReason);
        Assert.Equal("iocp", connection.Features.Get<IProactorConnectionFeature>()!.Backend);
        Assert.All(IocpTestServer.Dispatchers(harness), d => Assert.Equal("iocp", d.BackendName));
    }

    [Fact]
    public async Task Echo_DataAlreadyWaiting_CompletesWithoutPackets()
    {
        SkipUnlessWindows();
        await using ListenerHarness harness = await ListenerHarness.BindAsync(TransportKind.Proactor);
        (Socket client, ConnectionContext connection) = await harness.ConnectAndAcceptAsync();
        Task echo = ServerPipes.EchoAsync(connection);

        // Act: small sends to an idle peer complete at once; so do receives of data that arrived before them.
        byte[] payload = RawClient.CreatePayload(256 * 1024);
        byte[] echoed = await RawClient.ExchangeAsync(client, payload);
        await echo.DefaultTimeout();

        // Assert
        Assert.Equal(RawClient.Hash(payload), RawClient.Hash(echoed));
        Assert.True(IocpTestServer.Dispatchers(harness).Sum(d => d.SynchronousCompletions) > 0, "No operation took the skip-on-success path.");
    }

    [Fact]
    public async Task CompletionModesRefused_ImmediateSuccessesWaitForTheirPackets_EachOperationCompletesOnce()
    {
        SkipUnlessWindows();
        // Setting skip-on-success fails for this harness's sockets (listen socket included): an operation that
        // succeeds at once then still queues a packet, which alone must complete it.
        ProactorTransportOptions? options = null;
        IocpDispatcher.TestFailCompletionModesHook = d => ReferenceEquals(d.Options, options);
        try
        {
            await using ListenerHarness harness = await ListenerHarness.BindAsync(TransportKind.Proactor, configure: o => options = o);
            IocpDispatcher[] dispatchers = IocpTestServer.Dispatchers(harness);
            // Clients queued before their accepts run: AcceptEx finds them waiting and succeeds at once.
            Socket[] clients = await Task.WhenAll(Enumerable.Range(0, 4).Select(_ => harness.ConnectAsync()));
            var echoes = new List<Task>();
            for (int i = 0; i < clients.Length; i++)
            {
                echoes.Add(ServerPipes.EchoAsync(await harness.AcceptAsync()));
            }

            // Act: data already waiting makes receives succeed at once; sends to an idle peer do too.
            byte[][] payloads = [.. Enumerable.Range(0, clients.Length).Select(i => RawClient.CreatePayload(256 * 1024, seed: i))];
            byte[][] echoed = await Task.WhenAll(clients.Select((c, i) => RawClient.ExchangeAsync(c, payloads[i])));
            await Task.WhenAll(echoes).DefaultTimeout();

            // Assert: every byte came back in order, no packet arrived for an operation already completed (a second
            // completion of one operation), and none was taken as done without its packet.
            for (int i = 0; i < clients.Length; i++)
            {
                Assert.Equal(RawClient.Hash(payloads[i]), RawClient.Hash(echoed[i]));
            }

            Assert.Equal(0, dispatchers.Sum(d => d.StaleCompletions));
            Assert.Equal(0, dispatchers.Sum(d => d.SynchronousCompletions));
        }
        finally
        {
            IocpDispatcher.TestFailCompletionModesHook = null;
        }
    }

    [Fact]
    public async Task Abort_IdleConnection_CancelsTheZeroByteReceiveWithCancelIoExAndSendsRst()
    {
        SkipUnlessWindows();
        await using ListenerHarness harness = await ListenerHarness.BindAsync(TransportKind.Proactor);
        (Socket client, ConnectionContext connection) = await harness.ConnectAndAcceptAsync();
        IocpDispatcher[] dispatchers = IocpTestServer.Dispatchers(harness);
        // The connection's zero-byte receive is pending once the dispatcher has started it.
        var proactorConnection = Assert.IsType<ProactorConnection>(connection);
        await IocpTestServer.WaitUntilAsync(() => proactorConnection.ReceiveActive, "the receive is armed");
        long cancelledBefore = dispatchers.Sum(d => d.CancelledOperations);

        // Act: the client's receive is pending before the abort (Wine reports a reset only to a pending receive).
        var closed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        connection.ConnectionClosed.Register(() => closed.TrySetResult());
        Task<int> clientReceive = client.ReceiveAsync(new byte[16], SocketFlags.None);
        await Task.Delay(100);
        connection.Abort(new ConnectionAbortedException("test abort"));
        await closed.Task.DefaultTimeout();

        // Assert: CancelIoEx found the pending zero-byte receive, and the abort reached the peer as RST.
        Assert.True(dispatchers.Sum(d => d.CancelledOperations) > cancelledBefore, "CancelIoEx did not cancel an operation in flight.");
        SocketException reset = await Assert.ThrowsAsync<SocketException>(() => clientReceive.DefaultTimeout());
        Assert.Equal(SocketError.ConnectionReset, reset.SocketErrorCode);
    }

    [Fact]
    public async Task LatePacket_ForClosedConnection_IsDroppedAndTheDispatcherGoesOn()
    {
        SkipUnlessWindows();
        await using ListenerHarness harness = await ListenerHarness.BindAsync(TransportKind.Proactor, configure: o => o.DispatcherCount = 1);
        (Socket client, ConnectionContext connection) = await harness.ConnectAndAcceptAsync();
        IocpDispatcher dispatcher = Assert.Single(IocpTestServer.Dispatchers(harness));
        var proactorConnection = Assert.IsType<ProactorConnection>(connection);
        await IocpTestServer.WaitUntilAsync(() => proactorConnection.ReceiveActive, "the receive is armed");
        ulong userData = proactorConnection.Token.ToUserData(OperationKind.Receive);
        client.Shutdown(SocketShutdown.Both);
        client.Dispose();
        await harness.DisposeConnectionAsync(connection);
        long staleBefore = dispatcher.StaleCompletions;

        // Act: a receive packet for the closed connection's old slot and generation arrives late.
        using var block = new IocpNativeBlock(64);
        dispatcher.PostPacketForTests(userData, block);
        await IocpTestServer.WaitUntilAsync(() => dispatcher.StaleCompletions > staleBefore, "the late packet is handled");

        // Assert: dropped, nothing in flight is miscounted, and the dispatcher still serves a new connection.
        Assert.Equal(staleBefore + 1, dispatcher.StaleCompletions);
        (Socket next, ConnectionContext nextConnection) = await harness.ConnectAndAcceptAsync();
        Task echo = ServerPipes.EchoAsync(nextConnection);
        byte[] payload = RawClient.CreatePayload(10_000);
        byte[] echoed = await RawClient.ExchangeAsync(next, payload);
        await echo.DefaultTimeout();
        Assert.Equal(RawClient.Hash(payload), RawClient.Hash(echoed));
    }

    [Fact]
    public async Task IdleConnections_WaitingWithZeroByteReceives_HoldNoPipeMemory()
    {
        SkipUnlessWindows();
        var pool = new TrackingMemoryPool();
        await using ListenerHarness harness = await ListenerHarness.BindAsync(TransportKind.Proactor, memoryPool: pool);
        var connections = new List<ProactorConnection>();
        for (int i = 0; i < 20; i++)
        {
            (_, ConnectionContext connection) = await harness.ConnectAndAcceptAsync();
            connections.Add(Assert.IsType<ProactorConnection>(connection));
        }

        // Act: every connection has its receive armed and nothing to read.
        await IocpTestServer.WaitUntilAsync(() => connections.All(c => c.ReceiveActive), "every receive is armed");

        // Assert: a zero-byte receive rents nothing; pipe memory is taken only when data has arrived.
        Assert.Equal(0, pool.Outstanding);
    }

    [Fact]
    public async Task GatherSend_MoreThan1024Segments_ArrivesWhole()
    {
        SkipUnlessWindows();
        // Wine fails WSASend with more than 1024 buffers; the backend caps each send and the rest goes out next.
        await using ListenerHarness harness = await ListenerHarness.BindAsync(TransportKind.Proactor, configure: o => o.MaxWriteBufferSize = null);
        (Socket client, ConnectionContext connection) = await harness.ConnectAndAcceptAsync();
        const int Segments = 3000;
        byte[] expected = RawClient.CreatePayload(Segments * 100);
        for (int i = 0; i < Segments; i++)
        {
            // Each GetMemory(4096) after a 100-byte advance of a nearly full block starts a new pipe segment.
            Memory<byte> memory = connection.Transport.Output.GetMemory(4000);
            expected.AsSpan(i * 100, 100).CopyTo(memory.Span);
            connection.Transport.Output.Advance(100);
            _ = connection.Transport.Output.GetMemory(4000);
        }

        await connection.Transport.Output.FlushAsync().DefaultTimeout();
        await connection.Transport.Output.CompleteAsync();

        byte[] received = await RawClient.ReceiveToEndAsync(client);
        Assert.Equal(RawClient.Hash(expected), RawClient.Hash(received));
    }
}
