using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using System.Text;
using KestrelProactor.Dispatching;
using KestrelProactor.Internal;
using KestrelProactor.Tests.Contract;
using KestrelProactor.Tests.Infrastructure;
using KestrelProactor.Tests.Reliability;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace KestrelProactor.Tests.Dispatching;

/// <summary>
/// How a dispatcher ends: on a failure, nothing is released before its kernel queue is closed; at a stop, owners
/// whose operations never end are released after the deadline, and every dispatcher stops at once. The Windows
/// project links this file.
/// </summary>
[Collection(DispatcherHookCollection.Name)]
public sealed class DispatcherEndTests
{
    public static TheoryData<TransportKind> FailureKinds => new(OperatingSystem.IsWindows()
        ? new[] { TransportKind.Proactor }
        : new[] { TransportKind.Proactor, TransportKind.ProactorBasicTier });

    /// <summary>The kind, and whether the ring closes with DEFER_TASKRUN (without it, memory in use is kept, not freed).</summary>
    public static TheoryData<TransportKind, bool> StuckKinds
    {
        get
        {
            var data = new TheoryData<TransportKind, bool> { { TransportKind.Proactor, false } };
            if (!OperatingSystem.IsWindows())
            {
                data.Add(TransportKind.ProactorBasicTier, false);
                // A polling ring has no DEFER_TASKRUN: the receive's pipe memory stays the kernel's.
                data.Add(TransportKind.ProactorBasicTier, true);
            }

            return data;
        }
    }

    [Theory]
    [MemberData(nameof(FailureKinds))]
    public async Task LoopFails_AScheduleFromAnotherThreadBeforeTeardown_ReleasesNothingUntilTheQueueIsClosed(TransportKind kind)
    {
        var pool = new TrackingMemoryPool();
        var connections = new ConcurrentDictionary<int, ProactorConnection>();
        WebApplication app = await StartHostAsync(kind, pool, connections);
        ProactorDispatcher? target = null;
        int windows = 0;
        bool releasedInWindow = true;
        try
        {
            int port = new Uri(app.Urls.First()).Port;
            ProactorDispatcher[] dispatchers = Dispatchers(app);
            // The one that does not accept (a listener is an owner but not a connection), so the endpoint lives on.
            await WaitUntilAsync(() => dispatchers.Count(d => d.ConnectionCount > d.OpenConnections) == 1);
            target = dispatchers.Single(d => d.ConnectionCount == d.OpenConnections);
            (Socket victim, List<Socket> clients) = await ConnectUntilServedByAsync(port, target);
            ProactorConnection connection = connections[((IPEndPoint)victim.LocalEndPoint!).Port];

            ProactorDispatcher.TestTeardownHook = d =>
            {
                if (!ReferenceEquals(d, target))
                {
                    return;
                }

                // The loop has failed and the ring is still open: an abort from an application thread now must not
                // release the connection (close its descriptor, give its pipe memory back) under the ring.
                Task.Run(() => connection.Abort(new ConnectionAbortedException("abort while the dispatcher fails"))).Wait(TestTimeouts.Default);
                releasedInWindow = connection.Socket.IsClosed;
                Interlocked.Increment(ref windows);
            };
            FailLoopOf(target);
            try
            {
                // The next pass of the target's loop fails; this request wakes it.
                await victim.SendAsync(Encoding.ASCII.GetBytes("GET /dispatcher HTTP/1.1\r\nHost: x\r\n\r\n")).DefaultTimeout();
                await ReceiveUntilClosedAsync(victim);
                await target.Ended.DefaultTimeout();
            }
            finally
            {
                ProactorDispatcher.TestLoopHook = null;
                ProactorDispatcher.TestTeardownHook = null;
            }

            Assert.Equal(1, windows);
            Assert.False(releasedInWindow, "The connection was released before its dispatcher's ring was closed.");
            // Released once the ring was closed.
            Assert.True(target.HasFailed);
            Assert.True(connection.Socket.IsClosed);
            clients.ForEach(c => c.Dispose());
        }
        finally
        {
            await app.StopAsync().DefaultTimeout();
            await app.DisposeAsync().AsTask().DefaultTimeout();
        }

        Assert.Empty(pool.CollectErrors());
    }

    [Theory]
    [MemberData(nameof(StuckKinds))]
    public async Task Stop_AConnectionWhoseReceiveNeverCompletes_IsReleasedAfterTheDeadline_AndItsDisposeReturns(TransportKind kind, bool pollingRing)
    {
        var logs = new CountingLoggerProvider();
        await using StuckServer server = await StuckServer.StartAsync(kind, logs, o => o.SubmissionQueuePolling = pollingRing, victims: 1);
        ProactorDispatcher dispatcher = server.DispatcherOf(server.Victims[0]);
        // The stuck operation holds no pipe memory: the basic tier waits for data with a poll before it takes any
        // (a drained socket), and the other tiers receive into the buffer ring. So even on a polling ring, whose
        // kernel may still run work after the queue is closed, nothing is kept and the pool is released. Memory
        // kept for the kernel is covered by KeptMemoryTests, with a receive and a send into pipe memory in flight.
        bool expectKept = false;

        await server.StopFactoryAsync();

        // The stop released the stuck connection: Kestrel's DisposeAsync of it returns, its client sees the end.
        await server.Victims[0].DisposeAsync().AsTask().DefaultTimeout();
        await ReceiveUntilClosedAsync(server.Clients[0]);
        Assert.Equal(1, logs.Count(DispatcherStopTimedOut));
        Assert.Equal(expectKept ? 1 : 0, logs.Count(MemoryKeptForKernel));
        Assert.Equal(!expectKept, dispatcher.PoolReleased);
    }

    [Fact]
    public async Task Stop_TwoDispatchersEachWithAStuckConnection_StopTogether()
    {
        var logs = new CountingLoggerProvider();
        await using StuckServer server = await StuckServer.StartAsync(TransportKind.Proactor, logs, configure: null, victims: 2);
        ProactorDispatcher first = server.DispatcherOf(server.Victims[0]);
        ProactorDispatcher second = server.DispatcherOf(server.Victims[1]);
        Assert.NotSame(first, second);

        await server.StopFactoryAsync();

        // Each was asked to stop before the other had ended: the stops ran side by side, so a stop that runs out of
        // time costs one deadline, not one per dispatcher.
        Assert.True(second.StopRequestedTimestamp < first.EndedTimestamp, "The second dispatcher was asked to stop only after the first had ended.");
        Assert.True(first.StopRequestedTimestamp < second.EndedTimestamp, "The first dispatcher was asked to stop only after the second had ended.");
        Assert.Equal(2, logs.Count(DispatcherStopTimedOut));
        foreach (ConnectionContext victim in server.Victims)
        {
            await victim.DisposeAsync().AsTask().DefaultTimeout();
        }
    }

    private const int DispatcherStopTimedOut = 40;
    private const int MemoryKeptForKernel = 41;

    /// <summary>
    /// A bound factory with connections whose receive completions are lost (<see cref="OperationTable.TestLoseCompletionHook"/>):
    /// as far as the dispatcher knows, their receive never ends, so their close never can.
    /// </summary>
    private sealed class StuckServer : IAsyncDisposable
    {
        private readonly ILoggerFactory _loggerFactory;
        private readonly HashSet<ProactorConnection> _stuck = [];

        private StuckServer(ProactorTransportFactory factory, IConnectionListener listener, ILoggerFactory loggerFactory)
        {
            Factory = factory;
            Listener = listener;
            _loggerFactory = loggerFactory;
        }

        public ProactorTransportFactory Factory { get; }

        public IConnectionListener Listener { get; }

        public List<ConnectionContext> Victims { get; } = [];

        public List<Socket> Clients { get; } = [];

        public static async Task<StuckServer> StartAsync(TransportKind kind, CountingLoggerProvider logs, Action<ProactorTransportOptions>? configure, int victims)
        {
            ILoggerFactory loggerFactory = LoggerFactory.Create(b => b.AddProvider(logs));
            var factory = new ProactorTransportFactory(Options.Create(TransportFactories.CreateOptions(kind, configure)), loggerFactory);
            IConnectionListener listener = await factory.BindAsync(new IPEndPoint(IPAddress.Loopback, 0)).DefaultTimeout();
            var server = new StuckServer(factory, listener, loggerFactory);
            for (int i = 0; i < victims; i++)
            {
                var client = new Socket(SocketType.Stream, ProtocolType.Tcp);
                server.Clients.Add(client);
                await client.ConnectAsync(listener.EndPoint).DefaultTimeout();
                ConnectionContext? connection = await listener.AcceptAsync().DefaultTimeout();
                server.Victims.Add(Assert.IsType<ProactorConnection>(connection));
            }

            // Lose their receives' completions once armed (connections are dealt to the dispatchers in turn).
            foreach (ProactorConnection victim in server.Victims.Cast<ProactorConnection>())
            {
                await WaitUntilAsync(() => victim.ReceiveActive);
                server._stuck.Add(victim);
            }

            HashSet<ProactorConnection> stuck = server._stuck;
            OperationTable.TestLoseCompletionHook = (owner, kind) => kind == OperationKind.Receive && owner is ProactorConnection c && stuck.Contains(c);
            return server;
        }

        public ProactorDispatcher DispatcherOf(ConnectionContext connection) => ((ProactorConnection)connection).Dispatcher;

        /// <summary>Unbinds and disposes the listener, then disposes the factory (stopping its dispatchers), as Kestrel does.</summary>
        public async Task StopFactoryAsync()
        {
            await Listener.UnbindAsync().DefaultTimeout();
            await Listener.DisposeAsync().DefaultTimeout();
            // Each dispatcher gives its connections StopTimeout to close: the stuck ones never do.
            await Factory.DisposeAsync().AsTask().WaitAsync(ProactorDispatcher.StopTimeout + TestTimeouts.Default);
        }

        public async ValueTask DisposeAsync()
        {
            OperationTable.TestLoseCompletionHook = null;
            Clients.ForEach(c => c.Dispose());
            await Factory.DisposeAsync();
            _loggerFactory.Dispose();
        }
    }

    private static async Task<(Socket Victim, List<Socket> Clients)> ConnectUntilServedByAsync(int port, ProactorDispatcher target)
    {
        var clients = new List<Socket>();
        for (int i = 0; i < 8; i++)
        {
            var client = new Socket(SocketType.Stream, ProtocolType.Tcp);
            clients.Add(client);
            await client.ConnectAsync(new IPEndPoint(IPAddress.Loopback, port)).DefaultTimeout();
            await client.SendAsync(Encoding.ASCII.GetBytes("GET /dispatcher HTTP/1.1\r\nHost: x\r\n\r\n")).DefaultTimeout();
            string response = await ReadResponseAsync(client);
            if (response.EndsWith("\r\n\r\n" + target.Id, StringComparison.Ordinal))
            {
                return (client, clients);
            }
        }

        throw new InvalidOperationException($"No connection was dealt to dispatcher {target.Id}.");
    }

    /// <summary>One Content-Length framed response, whole.</summary>
    private static async Task<string> ReadResponseAsync(Socket socket)
    {
        var buffer = new byte[4096];
        int filled = 0;
        while (true)
        {
            int n = await socket.ReceiveAsync(buffer.AsMemory(filled)).DefaultTimeout();
            Assert.NotEqual(0, n);
            filled += n;
            string text = Encoding.ASCII.GetString(buffer, 0, filled);
            int headerEnd = text.IndexOf("\r\n\r\n", StringComparison.Ordinal);
            int lengthAt = text.IndexOf("Content-Length: ", StringComparison.OrdinalIgnoreCase);
            if (headerEnd > 0 && lengthAt > 0)
            {
                int length = int.Parse(text.AsSpan(lengthAt + 16, text.IndexOf('\r', lengthAt) - lengthAt - 16));
                if (filled >= headerEnd + 4 + length)
                {
                    return text;
                }
            }
        }
    }

    private static async Task ReceiveUntilClosedAsync(Socket socket)
    {
        var buffer = new byte[4096];
        try
        {
            while (await socket.ReceiveAsync(buffer).DefaultTimeout() != 0)
            {
            }
        }
        catch (SocketException ex) when (ex.SocketErrorCode == SocketError.ConnectionReset)
        {
        }
    }

    private static void FailLoopOf(ProactorDispatcher target)
        => ProactorDispatcher.TestLoopHook = d =>
        {
            if (ReferenceEquals(d, target))
            {
                throw new InvalidOperationException("injected ring failure");
            }
        };

    private static ProactorDispatcher[] Dispatchers(WebApplication app)
        => app.Services.GetServices<IConnectionListenerFactory>().OfType<ProactorTransportFactory>().Single().Backend!.Dispatchers;

    private static async Task WaitUntilAsync(Func<bool> condition)
    {
        using var deadline = new CancellationTokenSource(TestTimeouts.Default);
        while (!condition())
        {
            await Task.Delay(20, deadline.Token);
        }
    }

    private static async Task<WebApplication> StartHostAsync(TransportKind kind, TrackingMemoryPool pool, ConcurrentDictionary<int, ProactorConnection> connections)
    {
        WebApplicationBuilder builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.WebHost.UseKestrel(k => k.Listen(IPAddress.Loopback, 0, listen => listen.Use(next => connection =>
        {
            // Kept by the client's port, so the test can reach the transport's connection behind its socket.
            if (connection is ProactorConnection proactor && proactor.RemoteEndPoint is IPEndPoint remote)
            {
                connections[remote.Port] = proactor;
            }

            return next(connection);
        })));
        builder.WebHost.UseProactorTransport(o => TransportFactories.Configure(kind, o, c => c.MemoryPoolFactory = () => pool));
        WebApplication app = builder.Build();
        app.MapGet("/dispatcher", (HttpContext c) =>
        {
            string id = c.Features.Get<IProactorConnectionFeature>()!.DispatcherId.ToString();
            c.Response.ContentLength = id.Length;
            return c.Response.WriteAsync(id);
        });
        await app.StartAsync().DefaultTimeout();
        return app;
    }
}
