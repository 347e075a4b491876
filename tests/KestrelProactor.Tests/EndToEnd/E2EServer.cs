using System.Net;
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
/// fallback off, so the server either runs on the native backend or does not start.
/// </summary>
public sealed class E2EServer : WebApplicationFactory<E2EServer>
{
    private readonly Action<ProactorTransportOptions>? _configureProactor;

    static E2EServer()
    {
        // The factory looks for the app's content root next to a solution file; this app has none, and it
        // reads this setting (through the ASPNETCORE_ environment prefix) before anything else.
        // The key is named after this assembly, which differs when the Windows test project compiles these tests in.
        string assembly = typeof(E2EServer).Assembly.GetName().Name!.ToUpperInvariant().Replace('.', '_');
        Environment.SetEnvironmentVariable("ASPNETCORE_TEST_CONTENTROOT_" + assembly, AppContext.BaseDirectory);
    }

    private E2EServer(TransportKind kind, Action<KestrelServerOptions>? listen, Action<ProactorTransportOptions>? configureProactor)
    {
        Kind = kind;
        _configureProactor = configureProactor;
        if (listen is null)
        {
            UseKestrel(0);
        }
        else
        {
            UseKestrel(listen);
        }
    }

    public TransportKind Kind { get; }

    public E2EAppState State { get; } = new();

    /// <summary>The first address Kestrel bound, with the port it chose.</summary>
    public Uri BaseAddress { get; private set; } = null!;

    public IPEndPoint EndPoint => new(IPAddress.Loopback, BaseAddress.Port);

    /// <summary>The value of <see cref="E2EApp.TransportHeader"/> every response of this server must carry.</summary>
    public string ExpectedTransport => Kind == TransportKind.Sockets
        ? E2EApp.SocketsTransport
        : E2EApp.ProactorTransport(TransportFactories.ExpectedBackend);

    /// <summary>
    /// Starts a server; <paramref name="listen"/> replaces the default plain-HTTP endpoint on 127.0.0.1:0.
    /// </summary>
    public static async Task<E2EServer> StartAsync(
        TransportKind kind,
        Action<KestrelServerOptions>? listen = null,
        Action<ProactorTransportOptions>? configureProactor = null)
    {
        var server = new E2EServer(kind, listen, configureProactor);
        try
        {
            await Task.Run(server.StartServer).LongTimeout();
            server.BaseAddress = new Uri(server.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First());
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
        var handler = new SocketsHttpHandler
        {
            PooledConnectionLifetime = Timeout.InfiniteTimeSpan,
            AllowAutoRedirect = false,
        };
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

    private void AssertBoundWithExpectedTransport()
    {
        var proactorFactories = Services.GetServices<IConnectionListenerFactory>().OfType<ProactorTransportFactory>().ToArray();
        if (Kind == TransportKind.Sockets)
        {
            Assert.Empty(proactorFactories);
            return;
        }

        var factory = Assert.Single(proactorFactories);
        Assert.True(
            factory.ActiveBackend == TransportFactories.ExpectedBackend,
            $"The proactor factory bound with '{factory.ActiveBackend}' (fallback reason: {factory.FallbackReason}).");
    }
}
