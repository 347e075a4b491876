using System.Net;
using System.Net.Sockets;
using System.Net.WebSockets;
using KestrelProactor.Tests.Infrastructure;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Mvc.Testing;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;

namespace KestrelProactor.Tests.EndToEnd;

/// <summary>
/// The end-to-end app on real Kestrel through <see cref="WebApplicationFactory{TEntryPoint}.UseKestrel(int)"/>.
/// <see cref="TransportKind.Sockets"/> is plain Kestrel; every other kind adds <c>UseProactorTransport</c> with
/// fallback off, so the server either runs on the native backend or does not start. It listens on TCP or on a Unix
/// socket (<see cref="TransportEndpoint"/>); the clients it makes reach either, so a test is the same over both.
/// </summary>
public sealed class E2EServer : WebApplicationFactory<E2EServer>
{
    private readonly Action<ProactorTransportOptions>? _configureProactor;
    private readonly UnixSocketPath? _unixPath;
    private readonly List<HttpMessageInvoker> _invokers = [];

    static E2EServer()
    {
        // The factory looks for the app's content root next to a solution file; this app has none, and it
        // reads this setting (through the ASPNETCORE_ environment prefix) before anything else.
        // The key is named after this assembly, which differs when the Windows test project compiles these tests in.
        string assembly = typeof(E2EServer).Assembly.GetName().Name!.ToUpperInvariant().Replace('.', '_');
        Environment.SetEnvironmentVariable("ASPNETCORE_TEST_CONTENTROOT_" + assembly, AppContext.BaseDirectory);
    }

    private E2EServer(TransportKind kind, TransportEndpoint endpoint, Action<ListenOptions>? listen, Action<ProactorTransportOptions>? configureProactor)
    {
        Kind = kind;
        _configureProactor = configureProactor;
        if (endpoint == TransportEndpoint.Unix)
        {
            _unixPath = new UnixSocketPath();
            string path = _unixPath.Path;
            UseKestrel(kestrel => kestrel.ListenUnixSocket(path, options => listen?.Invoke(options)));
        }
        else if (listen is null)
        {
            UseKestrel(0);
        }
        else
        {
            UseKestrel(kestrel => kestrel.Listen(IPAddress.Loopback, 0, listen));
        }
    }

    public TransportKind Kind { get; }

    public E2EAppState State { get; } = new();

    /// <summary>
    /// The address clients use: the first one Kestrel bound, with the port it chose; over a Unix socket,
    /// <c>http(s)://localhost/</c>, as the clients this server makes connect to the socket whatever the host.
    /// </summary>
    public Uri BaseAddress { get; private set; } = null!;

    /// <summary>What a raw client connects to: 127.0.0.1 and the bound port, or the Unix socket's path.</summary>
    public EndPoint EndPoint => _unixPath is null ? new IPEndPoint(IPAddress.Loopback, BaseAddress.Port) : _unixPath.EndPoint;

    /// <summary>The arguments that make curl connect to this server's endpoint (none over TCP: the URL says it).</summary>
    public string[] CurlEndPointArguments => _unixPath is null ? [] : ["--unix-socket", _unixPath.Path];

    /// <summary>The value of <see cref="E2EApp.TransportHeader"/> every response of this server must carry.</summary>
    public string ExpectedTransport => Kind == TransportKind.Sockets
        ? E2EApp.SocketsTransport
        : E2EApp.ProactorTransport(TransportFactories.ExpectedBackend);

    /// <summary>
    /// Starts a server listening on 127.0.0.1:0 or on a fresh Unix socket; <paramref name="listen"/> configures that
    /// endpoint (protocols, TLS), which has Kestrel's defaults without it.
    /// </summary>
    public static async Task<E2EServer> StartAsync(
        TransportKind kind,
        TransportEndpoint endpoint = TransportEndpoint.Tcp,
        Action<ListenOptions>? listen = null,
        Action<ProactorTransportOptions>? configureProactor = null)
    {
        var server = new E2EServer(kind, endpoint, listen, configureProactor);
        try
        {
            await Task.Run(server.StartServer).LongTimeout();
            string address = server.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
            server.BaseAddress = server._unixPath is null
                ? new Uri(address)
                : new Uri(address.StartsWith("https:", StringComparison.Ordinal) ? "https://localhost/" : "http://localhost/");
            server.AssertBoundWithExpectedTransport();
            return server;
        }
        catch
        {
            await server.DisposeAsync();
            throw;
        }
    }

    /// <summary>An HttpClient on its own handler, addressed to this server.</summary>
    public HttpClient CreateHttpClient(Action<SocketsHttpHandler>? configure = null, Version? version = null)
    {
        SocketsHttpHandler handler = CreateHandler();
        handler.AllowAutoRedirect = false;
        configure?.Invoke(handler);
        var client = new HttpClient(handler)
        {
            BaseAddress = BaseAddress,
            Timeout = TestTimeouts.Long,
        };
        if (version is not null)
        {
            client.DefaultRequestVersion = version;
            client.DefaultVersionPolicy = HttpVersionPolicy.RequestVersionExact;
        }

        return client;
    }

    /// <summary>A handler whose connections reach this server's endpoint, whatever host a request names.</summary>
    public SocketsHttpHandler CreateHandler()
    {
        var handler = new SocketsHttpHandler { PooledConnectionLifetime = Timeout.InfiniteTimeSpan };
        if (_unixPath is not null)
        {
            ClientSocket.RouteTo(handler, _unixPath.EndPoint);
        }

        return handler;
    }

    /// <summary>
    /// Opens a WebSocket to <paramref name="uri"/> on this server, over its endpoint. The invoker a Unix socket needs
    /// lives as long as the server, as the WebSocket uses its connection until it closes.
    /// </summary>
    public Task ConnectWebSocketAsync(ClientWebSocket socket, Uri uri, CancellationToken cancellationToken)
    {
        if (_unixPath is null)
        {
            return socket.ConnectAsync(uri, cancellationToken);
        }

        var invoker = new HttpMessageInvoker(CreateHandler());
        lock (_invokers)
        {
            _invokers.Add(invoker);
        }

        return socket.ConnectAsync(uri, invoker, cancellationToken);
    }

    public override async ValueTask DisposeAsync()
    {
        try
        {
            await base.DisposeAsync();
        }
        finally
        {
            lock (_invokers)
            {
                _invokers.ForEach(invoker => invoker.Dispose());
            }

            _unixPath?.Dispose();
        }
    }

    public void AssertServedByExpectedTransport(HttpResponseMessage response)
    {
        Assert.True(response.Headers.TryGetValues(E2EApp.TransportHeader, out var values), $"The response has no {E2EApp.TransportHeader} header.");
        Assert.Equal(ExpectedTransport, Assert.Single(values));
    }

    public void AssertServedByExpectedTransport(string? headerValue) => Assert.Equal(ExpectedTransport, headerValue);

    protected override IHostBuilder CreateHostBuilder()
        => new HostBuilder().ConfigureHostOptions(static o => o.ShutdownTimeout = TimeSpan.FromSeconds(5));

    protected override void ConfigureWebHost(IWebHostBuilder builder)
    {
        builder.ConfigureServices(services => E2EApp.AddServices(services, State));
        builder.ConfigureKestrel(static options =>
        {
            // The large-body tests send more than the 30 MB default.
            options.Limits.MaxRequestBodySize = null;
        });
        builder.Configure(E2EApp.Configure);
        if (Kind != TransportKind.Sockets)
        {
            builder.UseProactorTransport(options => TransportFactories.Configure(Kind, options, _configureProactor));
        }
    }

    private void AssertBoundWithExpectedTransport() => TransportPresets.AssertHostBound(Kind, Services);
}
