using KestrelProactor;
using KestrelProactor.Internal;
using Microsoft.Extensions.Configuration;

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
        return hostBuilder.ConfigureServices(services => ProactorServices.Add(services, configuration: null, configureOptions));
    }

    /// <summary>
    /// Serves Kestrel's endpoints with the proactor transport, its options bound from <paramref name="configuration"/>
    /// (usually the <see cref="ProactorTransportOptions.ConfigurationSectionName"/> section, so that appsettings.json and
    /// environment variables such as <c>Kestrel__Proactor__DispatcherCount</c> set them). The options are validated
    /// when the host starts: a key that names no option, a value that does not convert, or a value out of range
    /// stops the start with a message naming the option and what it allows.
    /// </summary>
    public static IWebHostBuilder UseProactorTransport(this IWebHostBuilder hostBuilder, IConfiguration configuration)
    {
        ArgumentNullException.ThrowIfNull(hostBuilder);
        ArgumentNullException.ThrowIfNull(configuration);
        return hostBuilder.ConfigureServices(services => ProactorServices.Add(services, configuration, configureOptions: null));
    }
}
