using System.IO.Pipelines;
using System.Net.Sockets;
using KestrelProactor.Tests.Infrastructure;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Connections.Features;

namespace KestrelProactor.Tests.Contract;

/// <summary>
/// Contract: <c>DisposeAsync</c> waits until no kernel operation can still touch the connection's buffers, and the
/// pool the transport uses is the one <see cref="IMemoryPoolFeature"/> exposes. A tracking pool catches blocks that
/// are never returned, returned twice, or written after their return.
/// </summary>
public sealed class MemoryPoolTests
{
    [Theory]
    [MemberData(nameof(TransportMatrix.All), MemberType = typeof(TransportMatrix))]
    public async Task DisposeAsync_AfterEcho_ReturnsEveryPooledBlockUntouched(TransportKind kind, TransportEndpoint endpoint)
    {
        // Arrange
        var pool = new TrackingMemoryPool();
        ListenerHarness harness = await ListenerHarness.BindAsync(kind, endpoint, memoryPool: pool);
        await using (harness)
        {
            (Socket client, ConnectionContext connection) = await harness.ConnectAndAcceptAsync();
            byte[] payload = RawClient.CreatePayload(1024 * 1024);
            Task echo = ServerPipes.EchoAsync(connection);
            byte[] echoed = await RawClient.ExchangeAsync(client, payload);
            await echo.DefaultTimeout();
            Assert.Same(pool, connection.Features.Get<IMemoryPoolFeature>()?.MemoryPool);
            Assert.Equal(RawClient.Hash(payload), RawClient.Hash(echoed));

            // Act
            await harness.DisposeAsync();
        }

        // Assert
        Assert.True(pool.Rented > 0, "The transport never rented from the configured pool.");
        Assert.Equal(0, pool.Outstanding);
        Assert.Empty(pool.CollectErrors());
    }

    [Theory]
    [MemberData(nameof(TransportMatrix.All), MemberType = typeof(TransportMatrix))]
    public async Task DisposeAsync_AfterAbortDuringBlockedSend_ReturnsEveryPooledBlockUntouched(TransportKind kind, TransportEndpoint endpoint)
    {
        // Arrange: 8 MiB to a client that does not read leaves a send in flight when the connection is aborted.
        var pool = new TrackingMemoryPool();
        ListenerHarness harness = await ListenerHarness.BindAsync(kind, endpoint, memoryPool: pool);
        await using (harness)
        {
            (_, ConnectionContext connection) = await harness.ConnectAndAcceptAsync();
            Task<FlushResult> write = connection.Transport.Output.WriteAsync(RawClient.CreatePayload(8 * 1024 * 1024), TestContext.Current.CancellationToken).AsTask();
            await Task.Delay(500, TestContext.Current.CancellationToken);
            Assert.False(write.IsCompleted, "8 MiB were flushed to a client that does not read.");

            // Act
            connection.Abort(new ConnectionAbortedException("The test aborted a blocked send."));
            await write.EndsWithinDefaultTimeout();
            await harness.DisposeAsync();
        }

        // Assert
        Assert.Equal(0, pool.Outstanding);
        Assert.Empty(pool.CollectErrors());
    }

    [Theory]
    // Over TCP only: a Unix socket has no RST (the peer's abortive close reads as end-of-stream, with either transport).
    [MemberData(nameof(TransportMatrix.Presets), MemberType = typeof(TransportMatrix))]
    public async Task DisposeAsync_AfterPeerResetDuringPendingRead_ReturnsEveryPooledBlockUntouched(TransportKind kind)
    {
        Assert.SkipWhen(TestHost.IsWine, TestHost.WineResetBeforeReceive);
        // Arrange: a receive is armed (waiting for data) when the peer resets.
        var pool = new TrackingMemoryPool();
        ListenerHarness harness = await ListenerHarness.BindAsync(kind, memoryPool: pool);
        await using (harness)
        {
            (Socket client, ConnectionContext connection) = await harness.ConnectAndAcceptAsync();
            await RawClient.SendAllAsync(client, RawClient.CreatePayload(100_000));
            await ServerPipes.ReadExactlyAsync(connection.Transport.Input, 100_000);
            Task<ReadResult> pendingRead = connection.Transport.Input.ReadAsync(TestContext.Current.CancellationToken).AsTask();

            // Act
            RawClient.Reset(client);
            await Assert.ThrowsAsync<ConnectionResetException>(() => pendingRead.DefaultTimeout());
            await harness.DisposeAsync();
        }

        // Assert
        Assert.Equal(0, pool.Outstanding);
        Assert.Empty(pool.CollectErrors());
    }
}
