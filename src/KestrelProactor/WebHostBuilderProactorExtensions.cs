using KestrelProactor;
using Microsoft.AspNetCore.Connections;
using Microsoft.Extensions.DependencyInjection;

namespace Microsoft.AspNetCore.Hosting;

/// <summary>
/// Extension methods that switch Kestrel to the proactor transport.
/// </summary>
public static class WebHostBuilderProactorExtensions
{
    /// <summary>
    /// Serves Kestrel's endpoints with the proactor transport (io_uring on Linux, IOCP on Windows). Where the
    /// native backend cannot run, endpoints are bound with Kestrel's socket transport and a warning names why.
    /// </summary>
    public static IWebHostBuilder UseProactorTransport(this IWebHostBuilder hostBuilder)
        => hostBuilder.UseProactorTransport(static _ => { });

    /// <summary>
    /// Serves Kestrel's endpoints with the proactor transport, configured by <paramref name="configureOptions"/>.
    /// </summary>
    public static IWebHostBuilder UseProactorTransport(this IWebHostBuilder hostBuilder, Action<ProactorTransportOptions> configureOptions)
    {
        ArgumentNullException.ThrowIfNull(hostBuilder);
        ArgumentNullException.ThrowIfNull(configureOptions);
        return hostBuilder.ConfigureServices(services =>
        {
            // Kestrel walks listener factories in reverse registration order, so a plain Add after
            // UseKestrel's TryAdd of the socket transport puts this factory first.
            services.AddSingleton<IConnectionListenerFactory, ProactorTransportFactory>();
            services.Configure(configureOptions);
        });
    }
}
