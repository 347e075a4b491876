using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Server.Kestrel.Transport.Sockets;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Options;

namespace KestrelProactor.Internal;

/// <summary>
/// The one place that registers the transport, shared by <c>UseProactorTransport</c> and the hosting startup.
/// </summary>
internal static class ProactorServices
{
    public static void Add(IServiceCollection services, IConfiguration? configuration, Action<ProactorTransportOptions>? configureOptions)
    {
        // Kestrel binds an endpoint with the last registered factory whose CanBind accepts it, and UseKestrel adds
        // the socket transport only when no factory is registered yet (TryAdd). A hosting startup runs before
        // UseKestrel, so registering the socket transport first here keeps the order "sockets, then proactor"
        // whichever runs first; named pipes and anything else the proactor cannot bind still go to Kestrel's.
        services.TryAddSingleton<IConnectionListenerFactory, SocketTransportFactory>();

        // The hosting startup and the application's own UseProactorTransport may both run: one factory is enough.
        if (!services.Any(static d => d.ServiceType == typeof(IConnectionListenerFactory) && d.ImplementationType == typeof(ProactorTransportFactory)))
        {
            services.AddSingleton<IConnectionListenerFactory, ProactorTransportFactory>();
        }

        OptionsBuilder<ProactorTransportOptions> options = services.AddOptions<ProactorTransportOptions>();
        if (configuration is not null)
        {
            // A misspelt key would otherwise be ignored without a word; fail the start naming it instead.
            options.Bind(configuration, static binder => binder.ErrorOnUnknownConfiguration = true);

            // The generated binder (reflection-free, so NativeAOT keeps it) skips an empty value where the reflection
            // binder set a nullable option to null; "MaxWriteBufferSize=" means unbounded, as documented.
            options.Configure(o =>
            {
                if (configuration[nameof(ProactorTransportOptions.MaxReadBufferSize)] == string.Empty)
                {
                    o.MaxReadBufferSize = null;
                }

                if (configuration[nameof(ProactorTransportOptions.MaxWriteBufferSize)] == string.Empty)
                {
                    o.MaxWriteBufferSize = null;
                }
            });
        }

        if (configureOptions is not null)
        {
            options.Configure(configureOptions);
        }

        // Validated when the host starts, before Kestrel binds, so a bad setting stops the process with the
        // option's name instead of surfacing as a failed bind.
        options.ValidateOnStart();
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IValidateOptions<ProactorTransportOptions>, ProactorOptionsValidation>());
    }
}
