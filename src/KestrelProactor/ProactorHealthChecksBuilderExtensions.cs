using KestrelProactor.Internal;
using Microsoft.Extensions.Diagnostics.HealthChecks;

namespace Microsoft.Extensions.DependencyInjection;

/// <summary>Registers the proactor transport's health check.</summary>
public static class ProactorHealthChecksBuilderExtensions
{
    /// <summary>The name the check is registered under unless another is given.</summary>
    public const string DefaultName = "proactor_transport";

    /// <summary>
    /// Adds a check of the proactor transport: <see cref="HealthStatus.Healthy"/> while its native backend (io_uring,
    /// IOCP) serves with every dispatcher running; <see cref="HealthStatus.Degraded"/> while Kestrel's socket
    /// transport serves in its place, with the reason (a container's seccomp profile, an old kernel), or before the
    /// first bind; <see cref="HealthStatus.Unhealthy"/> once a dispatcher has failed, naming which and why.
    /// The description says which, and the data carries the backend, the dispatchers and the failures.
    /// </summary>
    /// <param name="builder">The application's health checks.</param>
    /// <param name="name">The check's name in the report.</param>
    /// <param name="tags">Tags to filter the check by (a readiness or liveness endpoint's predicate).</param>
    public static IHealthChecksBuilder AddProactorTransport(this IHealthChecksBuilder builder, string name = DefaultName, IEnumerable<string>? tags = null)
    {
        ArgumentNullException.ThrowIfNull(builder);
        ArgumentException.ThrowIfNullOrEmpty(name);
        return builder.Add(new HealthCheckRegistration(
            name,
            static services => new ProactorHealthCheck(services),
            failureStatus: HealthStatus.Unhealthy,
            tags));
    }
}
