using System.Net;
using System.Net.Sockets;
using System.Net.WebSockets;
using KestrelProactor.Tests.EndToEnd;
using KestrelProactor.Tests.Infrastructure;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace KestrelProactor.Tests.Frameworks;

/// <summary>
/// A real ASP.NET Core application (a framework's services and endpoints) on Kestrel with the transport under test:
/// <see cref="TransportKind.Sockets"/> is plain Kestrel, every other kind adds <c>UseProactorTransport</c> with its
/// preset and fallback off. It listens on 127.0.0.1:0 or on a fresh Unix socket, with the protocols asked for (over TLS
/// with the test certificate when asked), and
/// makes clients that reach that endpoint whatever host a request names.
/// </summary>
internal sealed class FrameworkHost : IAsyncDisposable
{
    private readonly WebApplication _app;
    private readonly UnixSocketPath? _unixPath;
    private readonly List<HttpMessageInvoker> _invokers = [];

    private FrameworkHost(WebApplication app, UnixSocketPath? unixPath, TransportKind kind)
    {
        _app = app;
        _unixPath = unixPath;
        Kind = kind;
    }

    public TransportKind Kind { get; }

    public IServiceProvider Services => _app.Services;

    /// <summary>The address clients use: 127.0.0.1 and the bound port, or <c>http://localhost/</c> over a Unix socket.</summary>
    public Uri BaseAddress { get; private set; } = null!;

    public static async Task<FrameworkHost> StartAsync(
        TransportKind kind,
        TransportEndpoint endpoint,
        HttpProtocols protocols,
        Action<IServiceCollection> services,
        Action<WebApplication> endpoints,
        bool tls = false)
    {
        WebApplicationBuilder builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions
        {
            ContentRootPath = AppContext.BaseDirectory,
            EnvironmentName = Environments.Production,
        });
        builder.Logging.ClearProviders();
        builder.Services.Configure<HostOptions>(static o => o.ShutdownTimeout = TimeSpan.FromSeconds(5));
        UnixSocketPath? unixPath = endpoint == TransportEndpoint.Unix ? new UnixSocketPath() : null;
        builder.WebHost.ConfigureKestrel(kestrel =>
        {
            void Configure(ListenOptions listen)
            {
                listen.Protocols = protocols;
                if (tls)
                {
                    listen.UseHttps(TestCertificate.Certificate);
                }
            }

            if (unixPath is not null)
            {
                kestrel.ListenUnixSocket(unixPath.Path, Configure);
            }
            else
            {
                kestrel.Listen(IPAddress.Loopback, 0, Configure);
            }
        });
        if (kind != TransportKind.Sockets)
        {
            builder.WebHost.UseProactorTransport(options => TransportFactories.Configure(kind, options));
        }

        services(builder.Services);
        WebApplication app = builder.Build();
        endpoints(app);
        var host = new FrameworkHost(app, unixPath, kind);
        try
        {
            await app.StartAsync().LongTimeout();
            string address = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
            host.BaseAddress = unixPath is null ? new Uri(address) : new Uri(tls ? "https://localhost/" : "http://localhost/");
            host.AssertBoundWithExpectedTransport();
            return host;
        }
        catch
        {
            await host.DisposeAsync();
            throw;
        }
    }

    /// <summary>A handler whose connections reach this host's endpoint, whatever host a request names.</summary>
    public SocketsHttpHandler CreateHandler()
    {
        var handler = new SocketsHttpHandler { PooledConnectionLifetime = Timeout.InfiniteTimeSpan, AllowAutoRedirect = false };
        handler.SslOptions.RemoteCertificateValidationCallback = TestCertificate.Validate;
        if (_unixPath is not null)
        {
            ClientSocket.RouteTo(handler, _unixPath.EndPoint);
        }

        return handler;
    }

    /// <summary>Opens a WebSocket over this host's endpoint; the invoker a Unix socket needs lives as long as the host.</summary>
    public async Task<WebSocket> ConnectWebSocketAsync(Uri uri, CancellationToken cancellationToken)
    {
        var socket = new ClientWebSocket();
        try
        {
            if (_unixPath is null)
            {
                await socket.ConnectAsync(uri, cancellationToken);
            }
            else
            {
                var invoker = new HttpMessageInvoker(CreateHandler());
                lock (_invokers)
                {
                    _invokers.Add(invoker);
                }

                await socket.ConnectAsync(uri, invoker, cancellationToken);
            }

            return socket;
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }

    public async ValueTask DisposeAsync()
    {
        try
        {
            await _app.StopAsync().LongTimeout();
            await _app.DisposeAsync().AsTask().LongTimeout();
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

    private void AssertBoundWithExpectedTransport() => TransportPresets.AssertHostBound(Kind, _app.Services);
}
