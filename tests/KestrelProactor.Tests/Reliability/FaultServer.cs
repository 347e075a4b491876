using System.Net;
using System.Net.Security;
using KestrelProactor.Dispatching;
using KestrelProactor.IoUring;
using KestrelProactor.Tests.EndToEnd;
using KestrelProactor.Tests.Infrastructure;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace KestrelProactor.Tests.Reliability;

/// <summary>The transport's resource counters, summed over the dispatchers, and the process's descriptors.</summary>
public sealed record ResourceSnapshot(long Owners, long InFlight, long Lent, long HandlerFaults, long StaleCompletions, int Descriptors)
{
    public override string ToString()
        => $"owners={Owners} in-flight={InFlight} lent={Lent} handler-faults={HandlerFaults} stale={StaleCompletions} sockets={Descriptors}";
}

/// <summary>Which endpoints a <see cref="FaultServer"/> listens on besides plain HTTP/1.1 + HTTP/2 (h2c needs its own).</summary>
[Flags]
public enum FaultEndpoints
{
    Http = 0,
    H2c = 1,
    Https = 2,
}

/// <summary>
/// A real Kestrel (WebApplication) on the transport under test, with the fault app, a connection middleware
/// that counts <c>ConnectionClosed</c>, a log that keeps transport faults, and the resource baseline taken
/// after one warm-up request. <see cref="AssertReleasedAsync"/> is the leak check every fault test ends with.
/// </summary>
internal sealed class FaultServer : IAsyncDisposable
{
    /// <summary>Socket descriptors allowed above the baseline: none (a leaked connection is one socket).</summary>
    public const int DescriptorSlack = 0;

    private readonly WebApplication _app;
    private readonly CountingLoggerProvider _logs;
    private bool _disposed;

    private FaultServer(TransportKind kind, WebApplication app, CountingLoggerProvider logs, FaultAppState state)
    {
        Kind = kind;
        _app = app;
        _logs = logs;
        State = state;
    }

    public TransportKind Kind { get; }

    public FaultAppState State { get; }

    public CountingLoggerProvider Logs => _logs;

    public IServiceProvider Services => _app.Services;

    public IPEndPoint EndPoint { get; private set; } = null!;

    public IPEndPoint? H2cEndPoint { get; private set; }

    public IPEndPoint? HttpsEndPoint { get; private set; }

    public int ListenerCount { get; private set; }

    public ProactorTransportFactory? Factory { get; private set; }

    public IReadOnlyList<ProactorDispatcher> Dispatchers => Factory?.Backend?.Dispatchers ?? [];

    public ResourceSnapshot Baseline { get; private set; } = null!;

    public bool IsProactor => Kind != TransportKind.Sockets;

    public static async Task<FaultServer> StartAsync(
        TransportKind kind,
        Action<KestrelServerOptions>? kestrel = null,
        Action<ProactorTransportOptions>? proactor = null,
        FaultEndpoints endpoints = FaultEndpoints.Http)
    {
        var state = new FaultAppState();
        var logs = new CountingLoggerProvider();
        WebApplicationBuilder builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.Logging.AddProvider(logs);
        builder.Services.AddSingleton(state);
        builder.Services.Configure<HostOptions>(o => o.ShutdownTimeout = TimeSpan.FromSeconds(10));
        builder.WebHost.UseKestrel(options =>
        {
            options.Limits.MaxRequestBodySize = null;
            kestrel?.Invoke(options);
            options.Listen(IPAddress.Loopback, 0, listen => listen.Use(next => CountConnections(next, state)));
            if ((endpoints & FaultEndpoints.H2c) != 0)
            {
                options.Listen(IPAddress.Loopback, 0, listen =>
                {
                    listen.Protocols = HttpProtocols.Http2;
                    listen.Use(next => CountConnections(next, state));
                });
            }

            if ((endpoints & FaultEndpoints.Https) != 0)
            {
                options.Listen(IPAddress.Loopback, 0, listen =>
                {
                    listen.Protocols = HttpProtocols.Http1AndHttp2;
                    listen.Use(next => CountConnections(next, state));
                    listen.UseHttps(TestCertificate.Certificate);
                });
            }
        });
        if (kind != TransportKind.Sockets)
        {
            builder.WebHost.UseProactorTransport(o => TransportFactories.Configure(kind, o, proactor));
        }

        WebApplication app = builder.Build();
        FaultApp.Map(app);
        var server = new FaultServer(kind, app, logs, state);
        try
        {
            await app.StartAsync().LongTimeout();
            server.OnStarted(endpoints);
            await server.WarmUpAsync();
            return server;
        }
        catch
        {
            await server.DisposeAsync();
            throw;
        }
    }

    private static ConnectionDelegate CountConnections(ConnectionDelegate next, FaultAppState state) => async connection =>
    {
        state.OnConnectionOpened();
        connection.ConnectionClosed.Register(static s => ((FaultAppState)s!).OnConnectionClosed(), state);
        await next(connection);
    };

    private void OnStarted(FaultEndpoints endpoints)
    {
        IPEndPoint[] bound = _app.Urls.Select(u => new Uri(u)).Select(u => new IPEndPoint(IPAddress.Loopback, u.Port)).ToArray();
        ListenerCount = bound.Length;
        // Kestrel reports the addresses in the order they were configured.
        int next = 0;
        EndPoint = bound[next++];
        H2cEndPoint = (endpoints & FaultEndpoints.H2c) != 0 ? bound[next++] : null;
        HttpsEndPoint = (endpoints & FaultEndpoints.Https) != 0 ? bound[next] : null;
        Factory = _app.Services.GetServices<IConnectionListenerFactory>().OfType<ProactorTransportFactory>().SingleOrDefault();
        if (IsProactor)
        {
            Assert.NotNull(Factory);
            Assert.Equal("io_uring", Factory.ActiveBackend);
        }
    }

    /// <summary>One request through a raw connection, then the baseline once everything is back to idle.</summary>
    private async Task WarmUpAsync()
    {
        await AssertServesAsync();
        await WaitUntilAsync(
            () => (!IsProactor || Snapshot().Owners == ListenerCount) && State.ConnectionsClosed == State.ConnectionsOpened,
            TestTimeouts.Default,
            "the warm-up connection to be released");
        Baseline = Snapshot();
    }

    public ResourceSnapshot Snapshot()
    {
        long owners = 0, inFlight = 0, lent = 0, faults = 0, stale = 0;
        foreach (ProactorDispatcher dispatcher in Dispatchers)
        {
            owners += dispatcher.ConnectionCount;
            inFlight += dispatcher.InFlightOperations;
            lent += dispatcher.ReceiveBuffersLent;
            faults += dispatcher.HandlerFaults;
            stale += (dispatcher as IoUringDispatcher)?.StaleCompletions ?? 0;
        }

        return new ResourceSnapshot(owners, inFlight, lent, faults, stale, ProcessResources.SocketDescriptors());
    }

    /// <summary>A fresh connection still gets a 200 from the server.</summary>
    public async Task AssertServesAsync()
    {
        string response = await RawClient.GetAsync(EndPoint, "/hello");
        Assert.StartsWith("HTTP/1.1 200 OK", response);
        Assert.Contains("\r\n\r\n", response);
        Assert.Contains("hello", response[response.IndexOf("\r\n\r\n", StringComparison.Ordinal)..]);
    }

    /// <summary>
    /// The leak check: every connection's <c>ConnectionClosed</c> fired; the dispatchers own only the listeners,
    /// have the baseline's operations in flight and no buffer lent; the process holds no more descriptors than
    /// at the baseline; and no handler, work item or dispatcher failed.
    /// </summary>
    public async Task AssertReleasedAsync(TimeSpan? timeout = null)
    {
        ResourceSnapshot baseline = Baseline;
        ResourceSnapshot last = baseline;
        await WaitUntilAsync(
            () =>
            {
                last = Snapshot();
                bool transport = !IsProactor || (last.Owners == ListenerCount && last.InFlight == baseline.InFlight && last.Lent == 0);
                bool descriptors = last.Descriptors <= baseline.Descriptors + DescriptorSlack;
                return transport && descriptors && State.ConnectionsClosed == State.ConnectionsOpened;
            },
            timeout ?? TestTimeouts.Default,
            () => $"resources back to the baseline ({baseline}); now {last}, ConnectionClosed fired {State.ConnectionsClosed} of {State.ConnectionsOpened}");
        Assert.Equal(0, last.HandlerFaults);
        Assert.Equal(0, last.StaleCompletions);
        Assert.Empty(_logs.TransportFaults);
    }

    public static Task WaitUntilAsync(Func<bool> condition, TimeSpan timeout, string what) => WaitUntilAsync(condition, timeout, () => what);

    /// <summary>Polls <paramref name="condition"/> every 20 ms until it holds; fails naming <paramref name="what"/> after <paramref name="timeout"/>.</summary>
    public static async Task WaitUntilAsync(Func<bool> condition, TimeSpan timeout, Func<string> what)
    {
        long deadline = Environment.TickCount64 + (long)timeout.TotalMilliseconds;
        while (!condition())
        {
            if (Environment.TickCount64 > deadline)
            {
                Assert.Fail($"Timed out after {timeout.TotalSeconds:0.#} s waiting for {what()}.");
            }

            await Task.Delay(20);
        }
    }

    /// <summary>Graceful stop with a bounded wait (Kestrel aborts what is left when <paramref name="timeout"/> passes).</summary>
    public async Task StopAsync(TimeSpan timeout)
    {
        using var cts = new CancellationTokenSource(timeout);
        await _app.StopAsync(cts.Token).WaitAsync(timeout + TestTimeouts.Default);
    }

    public async ValueTask DisposeAsync()
    {
        if (_disposed)
        {
            return;
        }

        _disposed = true;
        await StopAsync(TimeSpan.FromSeconds(5));
        await _app.DisposeAsync().AsTask().DefaultTimeout();
    }

    internal static bool AcceptTestCertificate(object sender, System.Security.Cryptography.X509Certificates.X509Certificate? certificate, System.Security.Cryptography.X509Certificates.X509Chain? chain, SslPolicyErrors errors)
        => TestCertificate.Validate(sender, certificate, chain, errors);
}
