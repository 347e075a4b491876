using System.Net.Sockets;
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
        // Arrange
        await using ListenerHarness harness = await ListenerHarness.BindAsync(kind, endpoint, configure: s_configurations[configuration]);
        // Where the two-buffer ring exists (io_uring with buffer rings), it must run dry, or its slow path went untested.
        bool ringMustRunDry = configuration == "TinyReceiveBufferRing" && TransportFactories.UsesBufferRing(kind);
        using CounterRecorder? exhausted = ringMustRunDry
            ? new CounterRecorder(((ProactorTransportFactory)harness.Factory).Backend!.Dispatchers[0].Context.Metrics.NoBufferCount)
            : null;
        var log = new System.Collections.Concurrent.ConcurrentQueue<string>();
        var clock = System.Diagnostics.Stopwatch.StartNew();
        KestrelProactor.IoUring.IoUringDispatcher[] dispatchers = harness.Factory is ProactorTransportFactory { Backend: { } b }
            ? b.Dispatchers.OfType<KestrelProactor.IoUring.IoUringDispatcher>().ToArray()
            : [];
        using var sampler = new Timer(_ =>
        {
            log.Enqueue($"{clock.ElapsedMilliseconds,6}ms pool: threads={ThreadPool.ThreadCount} queued={ThreadPool.PendingWorkItemCount} completed={ThreadPool.CompletedWorkItemCount} " +
                        string.Join(" | ", dispatchers.Select(d => d.SampleReceiveState())));
        }, null, 0, 1000);
        Task<Task[]> acceptLoop = Task.Run(async () =>
        {
            var echoes = new Task[ClientCount];
            for (int i = 0; i < ClientCount; i++)
            {
                ConnectionContext connection = await harness.AcceptAsync();
                string id = connection.ConnectionId;
                echoes[i] = ServerPipes.EchoAsync(connection);
                _ = echoes[i].ContinueWith(t => log.Enqueue($"{clock.ElapsedMilliseconds,6}ms echo {id} ended: {t.Status} {t.Exception?.InnerException?.GetType().Name} {t.Exception?.InnerException?.StackTrace?.Split('\n').FirstOrDefault()?.Trim()}"), TaskScheduler.Default);
            }

            return echoes;
        }, TestContext.Current.CancellationToken);

        // Act
        Task<bool>[] clients = Enumerable.Range(0, ClientCount).Select(i => Task.Run(async () =>
        {
            byte[] payload = RawClient.CreatePayload(PayloadSize, seed: i);
            Socket client = await harness.ConnectAsync();
            try
            {
                byte[] echoed = await RawClient.ExchangeAsync(client, payload);
                log.Enqueue($"{clock.ElapsedMilliseconds,6}ms client {i} done");
                return echoed.Length == payload.Length && RawClient.Hash(echoed) == RawClient.Hash(payload);
            }
            catch (Exception ex)
            {
                log.Enqueue($"{clock.ElapsedMilliseconds,6}ms client {i} failed: {ex.GetType().Name} {ex.StackTrace?.Split('\n').FirstOrDefault()?.Trim()}");
                throw;
            }
        }, TestContext.Current.CancellationToken)).ToArray();

        bool[] intact;
        try
        {
            intact = await Task.WhenAll(clients).LongTimeout();
        }
        catch (Exception) when (harness.Factory is ProactorTransportFactory { Backend: { } backend })
        {
            // What the dispatchers' receive side looked like when a client gave up waiting.
            foreach (KestrelProactor.IoUring.IoUringDispatcher dispatcher in backend.Dispatchers.OfType<KestrelProactor.IoUring.IoUringDispatcher>())
            {
                TestContext.Current.TestOutputHelper?.WriteLine(dispatcher.DescribeReceiveState());
            }

            TestContext.Current.TestOutputHelper?.WriteLine(KernelThreads.Describe());
            foreach (string line in log)
            {
                TestContext.Current.TestOutputHelper?.WriteLine(line);
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
}
