using System.Collections.Concurrent;
using System.Diagnostics;
using System.IO.Pipelines;
using System.Net.Sockets;
using KestrelProactor.IoUring;
using KestrelProactor.Tests.Infrastructure;
using Microsoft.AspNetCore.Connections;

namespace KestrelProactor.Tests.Contract;

/// <summary>
/// The echo contract under the smallest resources the options allow, where a proactor's slow paths run: a full
/// submission queue, an exhausted receive-buffer ring, one dispatcher for every connection. These options exist
/// only on the proactor; the socket transport runs the same traffic as a check on the test itself.
/// </summary>
public sealed class TightResourceTests
{
    private const int ClientCount = 32;
    private const int PayloadSize = 256 * 1024;
    private const int SendSliceSize = 16 * 1024;

    /// <summary>
    /// How long one connection may go without moving a byte either way, while it still has bytes to move, before the
    /// test calls it stalled. The test measures progress, not the latency of single operations: on a starved machine
    /// a transport that shares its throughput fairly among the 32 connections drains each slowly, and a send waits
    /// until a quarter of a whole socket buffer (about 200 KiB on a Unix socket) is left, which can take longer than
    /// any per-operation time-out although every connection keeps moving. A connection left without service while
    /// others are served is what this catches.
    /// </summary>
    private static readonly TimeSpan StallLimit = TestTimeouts.Default;

    public static TheoryData<TransportKind, TransportEndpoint, string> KindsAndConfigurations
    {
        get
        {
            var data = new TheoryData<TransportKind, TransportEndpoint, string>();
            foreach ((TransportKind kind, TransportEndpoint endpoint) in TransportMatrix.Cases)
            {
                foreach (string configuration in s_configurations.Keys)
                {
                    data.Add(kind, endpoint, configuration);
                }
            }

            return data;
        }
    }

    private static readonly Dictionary<string, Action<ProactorTransportOptions>> s_configurations = new()
    {
        ["TinySubmissionQueue"] = o => o.SubmissionQueueSize = 4,
        ["TinyReceiveBufferRing"] = o =>
        {
            o.ReceiveBufferCount = 2;
            o.ReceiveBufferSize = 512;
        },
        ["SingleDispatcher"] = o => o.DispatcherCount = 1,
    };

    [Theory]
    [MemberData(nameof(KindsAndConfigurations))]
    public async Task TransportPipes_ConcurrentEchoesWithTightResources_AllIntact(TransportKind kind, TransportEndpoint endpoint, string configuration)
    {
        // Arrange: receive and read timing on, for the failure message (left on: it only adds clock reads).
        KestrelProactor.Internal.ProactorConnection.TimingForTests = true;
        await using ListenerHarness harness = await ListenerHarness.BindAsync(kind, endpoint, configure: s_configurations[configuration]);
        // Where the two-buffer ring exists (io_uring with buffer rings), it must run dry, or its slow path went untested.
        bool ringMustRunDry = configuration == "TinyReceiveBufferRing" && TransportFactories.UsesBufferRing(kind);
        using CounterRecorder? exhausted = ringMustRunDry
            ? new CounterRecorder(((ProactorTransportFactory)harness.Factory).Backend!.Dispatchers[0].Context.Metrics.NoBufferCount)
            : null;

        // Every wait below ends when a connection stalls (or, at the latest, after the long time-out).
        using var stop = new CancellationTokenSource(TestTimeouts.Long);
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(stop.Token, TestContext.Current.CancellationToken);
        CancellationToken token = linked.Token;
        var moved = new long[ClientCount];
        var finished = new bool[ClientCount];
        var log = new ConcurrentQueue<string>();
        string? stall = null; // written by the watchdog only
        var clock = Stopwatch.StartNew();
        var lastMoved = new long[ClientCount];
        var lastMovedAt = new TimeSpan[ClientCount];
        var othersAtLastMove = new long[ClientCount];
        IoUringDispatcher[] dispatchers = harness.Factory is ProactorTransportFactory { Backend: { } backend }
            ? backend.Dispatchers.OfType<IoUringDispatcher>().ToArray()
            : [];
        using var watchdog = new Timer(_ =>
        {
            // Once a second (a late tick skips rather than overlaps): a sample for the failure message, and the stall
            // check. Stalled: nothing moved for this connection while the others moved at least a payload's worth, so
            // a machine too busy to run the test at all is not taken for a stall (the long time-out bounds that).
            if (!Monitor.TryEnter(lastMoved))
            {
                return;
            }

            try
            {
                TimeSpan now = clock.Elapsed;
                log.Enqueue($"{now.TotalMilliseconds,6:F0}ms pool: threads={ThreadPool.ThreadCount} queued={ThreadPool.PendingWorkItemCount} " +
                            string.Join(" | ", dispatchers.Select(d => d.SampleReceiveState())));
                long total = 0;
                for (int i = 0; i < ClientCount; i++)
                {
                    total += Interlocked.Read(ref moved[i]);
                }

                for (int i = 0; i < ClientCount; i++)
                {
                    long bytes = Interlocked.Read(ref moved[i]);
                    if (bytes != lastMoved[i] || Volatile.Read(ref finished[i]))
                    {
                        lastMoved[i] = bytes;
                        lastMovedAt[i] = now;
                        othersAtLastMove[i] = total - bytes;
                    }
                    else if (now - lastMovedAt[i] > StallLimit && total - bytes - othersAtLastMove[i] >= PayloadSize)
                    {
                        stall ??= $"client {i} moved no byte for {(now - lastMovedAt[i]).TotalSeconds:F0} s, after {bytes} of {2 * PayloadSize} " +
                                  $"(sent and echoed), while the others moved {total - bytes - othersAtLastMove[i]}";
                        stop.Cancel();
                    }
                }
            }
            finally
            {
                Monitor.Exit(lastMoved);
            }
        }, null, TimeSpan.Zero, TimeSpan.FromSeconds(1));
        Task<Task[]> acceptLoop = Task.Run(async () =>
        {
            var echoes = new Task[ClientCount];
            for (int i = 0; i < ClientCount; i++)
            {
                ConnectionContext connection = await harness.AcceptAsync();
                echoes[i] = EchoAsync(connection, token);
            }

            return echoes;
        }, TestContext.Current.CancellationToken);

        // Act
        Task<bool>[] clients = Enumerable.Range(0, ClientCount).Select(i => Task.Run(async () =>
        {
            byte[] payload = RawClient.CreatePayload(PayloadSize, seed: i);
            Socket client = await harness.ConnectAsync();
            byte[] echoed = await ExchangeAsync(client, payload, moved, i, token);
            Volatile.Write(ref finished[i], true);
            log.Enqueue($"{clock.ElapsedMilliseconds,6}ms client {i} done");
            return echoed.Length == payload.Length && RawClient.Hash(echoed) == RawClient.Hash(payload);
        }, TestContext.Current.CancellationToken)).ToArray();

        bool[] intact;
        try
        {
            intact = await Task.WhenAll(clients).LongTimeout();
        }
        catch (Exception) when (harness.Factory is ProactorTransportFactory { Backend: not null } || stall is not null)
        {
            // What the dispatchers' receive side looked like when a connection stalled, and how it got there.
            foreach (IoUringDispatcher dispatcher in dispatchers)
            {
                TestContext.Current.TestOutputHelper?.WriteLine(dispatcher.DescribeReceiveState());
            }

            TestContext.Current.TestOutputHelper?.WriteLine(KernelThreads.Describe());
            foreach (string line in log)
            {
                TestContext.Current.TestOutputHelper?.WriteLine(line);
            }

            if (stall is not null)
            {
                Assert.Fail(stall);
            }

            throw;
        }

        await Task.WhenAll(await acceptLoop.LongTimeout()).LongTimeout();

        // Assert
        Assert.All(intact, Assert.True);
        if (exhausted is not null)
        {
            Assert.True(exhausted.Total > 0, "No receive found the buffer ring empty: kestrel.proactor.receive_buffers_exhausted stayed 0.");
        }
    }

    /// <summary>Copies input to output until the peer's FIN, then completes the output; every wait ends with <paramref name="token"/>.</summary>
    private static async Task EchoAsync(ConnectionContext connection, CancellationToken token)
    {
        PipeReader input = connection.Transport.Input;
        PipeWriter output = connection.Transport.Output;
        while (true)
        {
            ReadResult result = await input.ReadAsync(token);
            foreach (ReadOnlyMemory<byte> segment in result.Buffer)
            {
                await output.WriteAsync(segment, token);
            }

            input.AdvanceTo(result.Buffer.End);
            if (result.IsCompleted)
            {
                break;
            }
        }

        await output.CompleteAsync().AsTask().WaitAsync(token);
    }

    /// <summary>
    /// Sends <paramref name="payload"/> in slices while receiving the echo, half-closes, and returns everything
    /// received until the server's FIN; every byte moved either way is added to <paramref name="moved"/>[<paramref name="index"/>].
    /// </summary>
    private static async Task<byte[]> ExchangeAsync(Socket socket, byte[] payload, long[] moved, int index, CancellationToken token)
    {
        // Receive while sending: a large payload would otherwise fill both directions' buffers and stall.
        Task<byte[]> receive = Task.Run(async () =>
        {
            using var received = new MemoryStream();
            var buffer = new byte[64 * 1024];
            while (true)
            {
                int read = await socket.ReceiveAsync(buffer, SocketFlags.None, token);
                if (read == 0)
                {
                    return received.ToArray();
                }

                received.Write(buffer, 0, read);
                Interlocked.Add(ref moved[index], read);
            }
        }, token);
        for (int offset = 0; offset < payload.Length;)
        {
            int sent = await socket.SendAsync(payload.AsMemory(offset, Math.Min(SendSliceSize, payload.Length - offset)), SocketFlags.None, token);
            offset += sent;
            Interlocked.Add(ref moved[index], sent);
        }

        socket.Shutdown(SocketShutdown.Send);
        return await receive.WaitAsync(token);
    }
}
