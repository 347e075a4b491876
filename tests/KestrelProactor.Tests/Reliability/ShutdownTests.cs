using System.Net;
using System.Net.Sockets;
using KestrelProactor.Tests.Infrastructure;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.Extensions.Logging;

namespace KestrelProactor.Tests.Reliability;

/// <summary>
/// Stopping the server: gracefully under load, with uploads in flight, and a hundred start/stop cycles in one
/// process, with the dispatcher threads, rings and sockets all gone afterwards.
/// </summary>
[Collection(ReliabilityCollection.Name)]
public sealed class ShutdownTests
{
    [Theory]
    [MemberData(nameof(TransportFactories.All), MemberType = typeof(TransportFactories))]
    public async Task StopAsync_UnderLoad_CompletesInFlightRequestsAndRefusesNewOnes(TransportKind kind)
    {
        var baseline = Resources.Take();
        await using (var server = await FaultServer.StartAsync(kind))
        {
            int ok = 0, notOk = 0, failed = 0;
            using var stopped = new CancellationTokenSource();
            using var client = new HttpClient(new SocketsHttpHandler { MaxConnectionsPerServer = 16 })
            {
                BaseAddress = new Uri($"http://{server.EndPoint}"),
                Timeout = TestTimeouts.Default,
            };

            Task load = Task.WhenAll(Enumerable.Range(0, 16).Select(worker => Task.Run(async () =>
            {
                for (int i = 0; i < 1000 && !stopped.IsCancellationRequested; i++)
                {
                    try
                    {
                        using HttpResponseMessage response = await client.GetAsync("/slow?ms=200");
                        _ = await response.Content.ReadAsStringAsync();
                        Interlocked.Increment(ref response.IsSuccessStatusCode ? ref ok : ref notOk);
                    }
                    catch (HttpRequestException)
                    {
                        // Refused or closed by the stopping server: a request that was never served.
                        Interlocked.Increment(ref failed);
                        await Task.Delay(10);
                    }
                }
            })));
            await FaultServer.WaitUntilAsync(() => server.State.SlowCompleted >= 32, TestTimeouts.Default, "load to be under way");

            await server.StopAsync(TimeSpan.FromSeconds(10));
            int enteredAtStop = server.State.SlowEntered;
            await FaultServer.WaitUntilAsync(() => Volatile.Read(ref ok) + Volatile.Read(ref notOk) >= enteredAtStop, TestTimeouts.Default, "every served response to reach its client");
            var refused = await Assert.ThrowsAnyAsync<SocketException>(() => RawClient.ConnectAsync(server.EndPoint));
            stopped.Cancel();
            await load.LongTimeout();

            Assert.Equal(0, notOk);
            Assert.Equal(server.State.SlowEntered, server.State.SlowCompleted);
            Assert.Equal(server.State.SlowCompleted, ok);
            Assert.Equal(SocketError.ConnectionRefused, refused.SocketErrorCode);
            Assert.Equal(server.State.ConnectionsOpened, server.State.ConnectionsClosed);
            Assert.Empty(server.Logs.TransportFaults);
        }

        await Resources.AssertBackToAsync(baseline);
    }

    [Theory]
    [MemberData(nameof(TransportFactories.All), MemberType = typeof(TransportFactories))]
    public async Task StopAsync_WhileUploadsInFlight_CancelsThemWithoutLeaking(TransportKind kind)
    {
        const int Uploads = 8;
        var baseline = Resources.Take();
        var clients = new List<Socket>();
        try
        {
            await using var server = await FaultServer.StartAsync(kind);
            for (int i = 0; i < Uploads; i++)
            {
                Socket client = await RawClient.ConnectAsync(server.EndPoint);
                clients.Add(client);
                await RawClient.SendAsync(client, "POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100000000\r\n\r\n");
                await RawClient.SendAsync(client, new byte[64 * 1024]);
            }

            await FaultServer.WaitUntilAsync(() => server.State.UploadsEntered == Uploads, TestTimeouts.Default, "every upload to be inside its handler");
            // Kestrel waits this long for the requests to end, then aborts their connections.
            await server.StopAsync(TimeSpan.FromSeconds(1));
            AppOutcome[] outcomes = await server.State.WaitForOutcomesAsync(Uploads, TestTimeouts.Default);

            Assert.All(outcomes, o => Assert.True(o.RequestAborted && o.Exception is not null, o.ToString()));
            foreach (Socket client in clients)
            {
                var (end, _) = await RawClient.ReadToEndAsync(client, TestTimeouts.Default, keep: 0);
                Assert.NotEqual(ConnectionEnd.StillOpen, end);
            }

            Assert.Empty(server.Logs.TransportFaults);
        }
        finally
        {
            clients.ForEach(c => c.Dispose());
        }

        await Resources.AssertBackToAsync(baseline);
    }

    [Fact]
    public async Task StartStop_HundredTimesInOneProcess_NoThreadDescriptorOrRingLeaks()
    {
        var baseline = Resources.Take();
        int allDescriptorsBefore = 0;

        for (int i = 0; i < 100; i++)
        {
            WebApplicationBuilder builder = WebApplication.CreateSlimBuilder();
            builder.Logging.ClearProviders();
            builder.WebHost.UseKestrel(k => k.Listen(IPAddress.Loopback, 0));
            builder.WebHost.UseProactorTransport(o => TransportFactories.Configure(TransportKind.Proactor, o));
            await using WebApplication app = builder.Build();
            app.MapGet("/hello", () => "hello");
            await app.StartAsync().DefaultTimeout();
            // A stopped dispatcher's thread may still be on its way out when the next host starts: wait for it,
            // so only a thread that never exits (a leak) fails this. At most, not exactly: a thread counted in the
            // baseline (another test's host, stopped just before this one began) may exit meanwhile.
            await FaultServer.WaitUntilAsync(
                () => ProcessResources.DispatcherThreads() <= baseline.DispatcherThreads + 2,
                TestTimeouts.Default,
                () => $"at most {baseline.DispatcherThreads + 2} dispatcher threads in cycle {i}, not {ProcessResources.DispatcherThreads()}");
            var endPoint = new IPEndPoint(IPAddress.Loopback, new Uri(app.Urls.First()).Port);
            Assert.Contains("hello", await RawClient.GetAsync(endPoint, "/hello"));
            await app.StopAsync().DefaultTimeout();
            if (i == 0)
            {
                // Counted after the first cycle: it loads the assemblies a host needs, and the runtime keeps a
                // descriptor per loaded assembly (about 200 when this test runs alone).
                allDescriptorsBefore = ProcessResources.OpenDescriptors();
            }
        }

        await Resources.AssertBackToAsync(baseline);
        // Everything else the runtime may open once (inotify, epoll, eventfd) stays well below one per cycle.
        Assert.InRange(ProcessResources.OpenDescriptors(), 0, allDescriptorsBefore + 16);
    }

    private sealed record Resources(int DispatcherThreads, int Rings, int Sockets)
    {
        public static Resources Take() => new(ProcessResources.DispatcherThreads(), ProcessResources.IoUringDescriptors(), ProcessResources.SocketDescriptors());

        /// <summary>No dispatcher thread, ring or socket beyond <paramref name="baseline"/>, within a bounded wait.</summary>
        public static async Task AssertBackToAsync(Resources baseline)
        {
            Resources now = Take();
            await FaultServer.WaitUntilAsync(
                () => (now = Take()) is var r && r.DispatcherThreads <= baseline.DispatcherThreads && r.Rings <= baseline.Rings && r.Sockets <= baseline.Sockets,
                TestTimeouts.Default,
                () => $"threads, rings and sockets back to {baseline}; now {now}");
        }
    }
}
