using KestrelProactor.Internal;
using Microsoft.AspNetCore.Hosting;
using Microsoft.Extensions.DependencyInjection;

[assembly: HostingStartup(typeof(ProactorHostingStartup))]

namespace KestrelProactor.Internal;

/// <summary>
/// Switches an application that does not reference this package to the proactor transport when it is named in
/// <c>ASPNETCORE_HOSTINGSTARTUPASSEMBLIES</c> (docs/operations.md). The options come from the
/// <see cref="ProactorTransportOptions.ConfigurationSectionName"/> section of the application's configuration.
/// </summary>
internal sealed class ProactorHostingStartup : IHostingStartup
{
    public void Configure(IWebHostBuilder builder)
        => builder.ConfigureServices((context, services) => ProactorServices.Add(
            services,
            context.Configuration.GetSection(ProactorTransportOptions.ConfigurationSectionName),
            configureOptions: null));
}
