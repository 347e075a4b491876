using KestrelProactor.Internal;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Server.Kestrel.Transport.Sockets;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

[assembly: HostingStartup(typeof(ProactorHostingStartup))]

namespace KestrelProactor.Internal;

/// <summary>
/// Switches an application that does not reference this package to the proactor transport when it is named in
/// <c>ASPNETCORE_HOSTINGSTARTUPASSEMBLIES</c> (docs/operations.md). The options come from the
/// <see cref="ProactorTransportOptions.ConfigurationSectionName"/> section of the application's configuration.
/// It takes the place of the socket transport the application registered (Kestrel's default, or its own
/// <c>UseSockets()</c>), and says so once at start: at Warning when the application configured the socket transport,
/// whose options then apply to none of its endpoints.
/// </summary>
internal sealed class ProactorHostingStartup : IHostingStartup
{
    public void Configure(IWebHostBuilder builder)
        => builder.ConfigureServices((context, services) =>
        {
            ProactorServices.Add(
                services,
                context.Configuration.GetSection(ProactorTransportOptions.ConfigurationSectionName),
                configureOptions: null);

            // The application's own registrations (UseSockets among them) come after this callback: they are looked
            // at when the host starts.
            services.AddSingleton<IHostedService>(provider => new SocketTransportReplacedNotice(services, provider.GetRequiredService<ILoggerFactory>()));
        });

    /// <summary>
    /// Whether the application configured <see cref="SocketTransportOptions"/>: <c>UseSockets(configure)</c>, or
    /// <c>Configure</c>/<c>PostConfigure</c>/<c>Bind</c> of them. Kestrel's own registration (its memory pool, made
    /// by <c>UseKestrel</c> and by a bare <c>UseSockets()</c>) is a factory and sets nothing an application chose.
    /// </summary>
    internal static bool ConfiguresSocketTransport(IServiceCollection services)
        => services.Any(static d =>
            d.ServiceType.IsGenericType
            && d.ServiceType.GetGenericArguments()[0] == typeof(SocketTransportOptions)
            && d.ImplementationFactory is null);

    private sealed class SocketTransportReplacedNotice(IServiceCollection services, ILoggerFactory loggerFactory) : IHostedService
    {
        public Task StartAsync(CancellationToken cancellationToken)
        {
            ILogger logger = loggerFactory.CreateLogger("KestrelProactor");
            if (ConfiguresSocketTransport(services))
            {
                ProactorLog.SocketTransportReplaced(
                    logger,
                    LogLevel.Warning,
                    "The application's SocketTransportOptions (UseSockets(options), Configure<SocketTransportOptions>) apply to none of its endpoints.");
            }
            else
            {
                ProactorLog.SocketTransportReplaced(logger, LogLevel.Information, "");
            }

            return Task.CompletedTask;
        }

        public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;
    }
}
