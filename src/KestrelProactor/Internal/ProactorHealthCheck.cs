using KestrelProactor.Dispatching;
using Microsoft.AspNetCore.Connections;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Diagnostics.HealthChecks;

namespace KestrelProactor.Internal;

/// <summary>
/// The transport's health: Healthy while a native backend (io_uring, IOCP) serves with every dispatcher running;
/// Degraded while Kestrel's socket transport serves in its place (with the reason) or before the first bind;
/// Unhealthy once a dispatcher has failed (which, and why), since the connections it owned were dropped and the
/// others carry its share. A failed dispatcher does not come back: the process must be restarted.
/// </summary>
internal sealed class ProactorHealthCheck : IHealthCheck
{
    private readonly IServiceProvider _services;

    public ProactorHealthCheck(IServiceProvider services) => _services = services;

    public Task<HealthCheckResult> CheckHealthAsync(HealthCheckContext context, CancellationToken cancellationToken = default)
        => Task.FromResult(Check(_services.GetServices<IConnectionListenerFactory>().OfType<ProactorTransportFactory>().FirstOrDefault()));

    internal static HealthCheckResult Check(ProactorTransportFactory? factory)
    {
        if (factory is null)
        {
            return HealthCheckResult.Unhealthy("The proactor transport is not registered: call UseProactorTransport on the web host builder.");
        }

        ProactorBackend? backend = factory.Backend;
        if (backend is null)
        {
            return factory.ActiveBackend == "sockets"
                ? HealthCheckResult.Degraded(
                    $"Served by Kestrel's socket transport: {factory.FallbackReason}.",
                    data: new Dictionary<string, object> { ["backend"] = "sockets", ["reason"] = factory.FallbackReason ?? string.Empty })
                : HealthCheckResult.Degraded("The proactor transport has not bound an endpoint yet.");
        }

        ProactorDispatcher[] dispatchers = backend.Dispatchers;
        var data = new Dictionary<string, object>
        {
            ["backend"] = backend.Name,
            ["dispatchers"] = dispatchers.Length,
            ["kernel"] = backend.KernelVersion,
        };
        var failures = new List<string>();
        Exception? firstFailure = null;
        foreach (ProactorDispatcher dispatcher in dispatchers)
        {
            if (dispatcher.LoopFailure is Exception failure)
            {
                failures.Add($"dispatcher {dispatcher.Id} failed: {failure.Message}");
                data[$"dispatcher.{dispatcher.Id}"] = failure.Message;
                firstFailure ??= failure;
            }
        }

        if (failures.Count != 0)
        {
            data["failed"] = failures.Count;
            return HealthCheckResult.Unhealthy(
                $"{string.Join("; ", failures)} ({dispatchers.Length - failures.Count} of {dispatchers.Length} still serve; restart the process).",
                firstFailure,
                data);
        }

        return HealthCheckResult.Healthy($"{backend.Name}, {dispatchers.Length} dispatchers running.", data);
    }
}
