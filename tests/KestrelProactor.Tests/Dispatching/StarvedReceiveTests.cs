using System.Collections.Concurrent;
using System.Net.Sockets;
using KestrelProactor.Dispatching;
using KestrelProactor.Internal;
using KestrelProactor.IoUring;
using KestrelProactor.Tests.Contract;
using KestrelProactor.Tests.Infrastructure;
using Microsoft.AspNetCore.Connections;

namespace KestrelProactor.Tests.Dispatching;

/// <summary>
/// Receives that find the buffer ring empty wait for buffers in a queue, and the queue is served in turn: with one
/// buffer going round, a connection whose peer keeps sending must not take it again and again while the others wait.
/// </summary>
public class StarvedReceiveTests
{
    private const int WaitingConnections = 4;
    private const int BuffersEach = 8;
    private const int BufferSize = 512;

    [Theory]
    [InlineData(TransportKind.Proactor)]
    [InlineData(TransportKind.ProactorPolling)]
    [InlineData(TransportKind.ProactorSingleShot)]
    public async Task ReceivesWaitingForTheLastBuffer_AreServedInTurn(TransportKind kind)
    {
        // Arrange: one dispatcher with a ring of two buffers; a connection whose application does not read holds one,
        // so one buffer goes round (each receive into it is copied to its pipe, and the buffer comes straight back).
        await using ListenerHarness harness = await ListenerHarness.BindAsync(kind, configure: o =>
        {
            o.DispatcherCount = 1;
            o.ReceiveBufferCount = 2;
            o.ReceiveBufferSize = BufferSize;
        });
        var dispatcher = (IoUringDispatcher)((ProactorTransportFactory)harness.Factory).Backend!.Dispatchers.Single();
        (Socket holderClient, _) = await harness.ConnectAndAcceptAsync();
        await RawClient.SendAllAsync(holderClient, new byte[BufferSize]);
        await WaitUntilAsync(() => dispatcher.ReceiveBuffersLent == 1);
        var clients = new Socket[WaitingConnections];
        var connections = new ProactorConnection[WaitingConnections];
        var payloads = new byte[WaitingConnections][];
        for (int i = 0; i < WaitingConnections; i++)
        {
            (clients[i], ConnectionContext connection) = await harness.ConnectAndAcceptAsync();
            connections[i] = (ProactorConnection)connection;
            payloads[i] = RawClient.CreatePayload(BuffersEach * BufferSize, seed: 80 + i);
        }

        // Act: every peer sends eight buffers' worth while the dispatcher is held, so that all of them wait for the
        // buffer before any is served; then the dispatcher goes on, and the order they get the buffer in is kept.
        var served = new ConcurrentQueue<int>();
        using (await DispatcherHold.HoldAsync(dispatcher, () => dispatcher.BufferReceivedForTests = c => served.Enqueue(Array.IndexOf(connections, c))))
        {
            for (int i = 0; i < WaitingConnections; i++)
            {
                await RawClient.SendAllAsync(clients[i], payloads[i]);
            }

            // Where a kernel thread runs the ring's work (submission polling), it does so beside the held dispatcher
            // and issues new submissions before the task work still queued: if only connection 0's receive had ended
            // at the release, its retries would take the buffer twice before the others' -ENOBUFS were even posted
            // (seen as "0,0,0,1,2,3,..."). So hold until every receive has ended, as one batch shows them elsewhere.
            if (dispatcher.KernelCompletesWhileHeldForTests)
            {
                await WaitUntilAsync(() => dispatcher.OwnersWithFinalReceiveReadyForTests().Intersect(connections).Count() == WaitingConnections);
                TestContext.Current.TestOutputHelper?.WriteLine("every receive had ended at the release");
            }
        }

        await WaitUntilAsync(() => served.Count(i => i >= 0) >= WaitingConnections * BuffersEach);

        // Assert: at every point, no connection had been served more than twice as often as another still waiting (in
        // turn, the counts differ by at most one; taken first until drained, one got all eight before the next any).
        int[] order = served.Where(i => i >= 0).ToArray();
        TestContext.Current.TestOutputHelper?.WriteLine("served in order: " + string.Join(",", order));
        var counts = new int[WaitingConnections];
        foreach (int i in order)
        {
            counts[i]++;
            int behind = Enumerable.Range(0, WaitingConnections).Where(j => counts[j] < BuffersEach).Select(j => counts[j]).DefaultIfEmpty(counts[i]).Min();
            Assert.True(counts[i] - behind <= 2, $"connection {i} was served {counts[i]} times while another still waiting had {behind}: {string.Join(",", order)}");
        }

        // And every byte arrived, in order.
        for (int i = 0; i < WaitingConnections; i++)
        {
            byte[] received = await ServerPipes.ReadExactlyAsync(connections[i].Transport.Input, payloads[i].Length);
            Assert.Equal(RawClient.Hash(payloads[i]), RawClient.Hash(received));
        }
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
