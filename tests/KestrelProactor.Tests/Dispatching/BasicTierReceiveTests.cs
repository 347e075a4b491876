using System.Buffers;
using System.IO.Pipelines;
using System.Net.Sockets;
using KestrelProactor.Dispatching;
using KestrelProactor.Internal;
using KestrelProactor.Tests.Contract;
using KestrelProactor.Tests.Infrastructure;
using Microsoft.AspNetCore.Connections;

namespace KestrelProactor.Tests.Dispatching;

/// <summary>
/// The basic tier (no buffer ring) receives into pipe memory: memory taken only once data is there, so an idle
/// connection holds none, and never more than a pool block per receive, so the pool serves every byte.
/// </summary>
public sealed class BasicTierReceiveTests
{
    private const int ConnectionCount = 8;

    [Fact]
    public async Task IdleConnections_HoldNoPoolMemory_UntilDataArrives()
    {
        // Arrange: receives the size of a pool block, so each would come from the pool if taken before the data.
        var pool = new TrackingMemoryPool();
        await using ListenerHarness harness = await ListenerHarness.BindAsync(
            TransportKind.ProactorBasicTier,
            configure: o => o.ReceiveBufferSize = TrackingMemoryPool.BlockSize,
            memoryPool: pool);
        var connections = new List<(Socket Client, ConnectionContext Connection)>();
        for (int i = 0; i < ConnectionCount; i++)
        {
            connections.Add(await harness.ConnectAndAcceptAsync());
        }

        // Act: every connection has its receive in flight, and nothing to read.
        foreach ((Socket _, ConnectionContext connection) in connections)
        {
            var server = (ProactorConnection)connection;
            await WaitUntilAsync(() => server.Dispatcher.InFlightOf(server) == 1);
        }

        // Assert
        Assert.Equal(0, pool.Outstanding);

        // Data then arrives in pool memory, and every connection still echoes.
        await Task.WhenAll(connections.Select(async (pair, i) =>
        {
            Task echo = ServerPipes.EchoAsync(pair.Connection);
            byte[] payload = RawClient.CreatePayload(20_000 + i, seed: 50 + i);
            Assert.Equal(payload, await RawClient.ExchangeAsync(pair.Client, payload));
            await echo.DefaultTimeout();
        })).LongTimeout();
        Assert.True(pool.Rented > 0);
    }

    [Fact]
    public async Task LargeUpload_EveryReceiveIsAPoolBlock_BytesIntact()
    {
        // Arrange: the default receive size (16 KiB), four times the pool's blocks.
        var pool = new TrackingMemoryPool();
        await using ListenerHarness harness = await ListenerHarness.BindAsync(TransportKind.ProactorBasicTier, memoryPool: pool);
        (Socket client, ConnectionContext connection) = await harness.ConnectAndAcceptAsync();
        byte[] payload = RawClient.CreatePayload(256 * 1024, seed: 60);

        // Act
        Task send = Task.Run(async () =>
        {
            await RawClient.SendAllAsync(client, payload);
            client.Shutdown(SocketShutdown.Send);
        });
        var received = new MemoryStream();
        int segments = 0;
        int foreign = 0;
        PipeReader input = connection.Transport.Input;
        while (true)
        {
            ReadResult result = await input.ReadAsync().AsTask().DefaultTimeout();
            foreach (ReadOnlyMemory<byte> segment in result.Buffer)
            {
                if (segment.IsEmpty)
                {
                    continue;
                }

                segments++;
                foreign += pool.Owns(segment) ? 0 : 1;
                received.Write(segment.Span);
            }

            input.AdvanceTo(result.Buffer.End);
            if (result.IsCompleted)
            {
                break;
            }
        }

        await send.DefaultTimeout();

        // Assert: a 16 KiB request would have made the pipe take arrays from outside the pool.
        Assert.Equal(RawClient.Hash(payload), RawClient.Hash(received.ToArray()));
        Assert.True(segments > 0);
        Assert.Equal(0, foreign);
    }

    private static async Task WaitUntilAsync(Func<bool> condition)
    {
        using var timeout = new CancellationTokenSource(TestTimeouts.Default);
        while (!condition())
        {
            await Task.Delay(10, timeout.Token);
        }
    }
}
