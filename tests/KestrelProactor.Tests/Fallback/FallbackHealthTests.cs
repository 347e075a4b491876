using System.Net;
using KestrelProactor.Tests.Infrastructure;

namespace KestrelProactor.Tests.Fallback;

/// <summary>
/// What a user sees where io_uring is denied the way a container's default seccomp profile denies it (the child
/// host installs such a filter on itself): the fallback reason names the filter and the container profile as the
/// cause and says what to allow, and the health check reports Degraded with that reason.
/// </summary>
public sealed class FallbackHealthTests
{
    [Fact]
    public async Task SeccompDeniesIoUringWithEperm_ReasonNamesTheFilterAndTheProfileToChange_HealthIsDegraded()
    {
        await using var host = FallbackHostProcess.Start("--deny-io-uring", "EPERM");
        var ready = await host.WaitForReadyAsync();

        using var client = new HttpClient { Timeout = TestTimeouts.Default };
        using HttpResponseMessage response = await client.GetAsync(new Uri(new Uri(ready["url"]), "/healthz")).DefaultTimeout();
        string health = await response.Content.ReadAsStringAsync().DefaultTimeout();
        await host.StopAsync();

        string reason = ready["reason"];
        Assert.Equal("sockets", ready["backend"]);
        Assert.StartsWith("io_uring_setup failed: EPERM (denied by this process's seccomp filter: ", reason);
        Assert.Contains("default seccomp profiles", reason);
        Assert.Contains("allows io_uring_setup, io_uring_enter and io_uring_register", reason);
        Assert.Contains("docs/operations.md", reason);

        // Degraded still answers 200: the site serves, on Kestrel's socket transport.
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.Equal($"Degraded: Served by Kestrel's socket transport: {reason}.", health);
        Assert.Equal(0, host.ExitCode);
    }

    [Fact]
    public async Task SeccompDeniesIoUringWithEnosys_ReasonNamesTheFilterAsAPossibleCause()
    {
        await using var host = FallbackHostProcess.Start("--deny-io-uring", "ENOSYS");
        var ready = await host.WaitForReadyAsync();
        await host.StopAsync();

        Assert.Equal("sockets", ready["backend"]);
        Assert.StartsWith("io_uring_setup failed: ENOSYS (the kernel has no io_uring, or this process's seccomp filter hides it: ", ready["reason"]);
        Assert.Contains("io_uring_setup, io_uring_enter and io_uring_register", ready["reason"]);
    }

    [Fact]
    public async Task IoUringAllowed_HealthIsHealthy()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "io_uring is Linux only.");
        await using var host = FallbackHostProcess.Start();
        var ready = await host.WaitForReadyAsync();

        using var client = new HttpClient { Timeout = TestTimeouts.Default };
        string health = await client.GetStringAsync(new Uri(new Uri(ready["url"]), "/healthz")).DefaultTimeout();
        await host.StopAsync();

        Assert.Equal("io_uring", ready["backend"]);
        Assert.StartsWith("Healthy: io_uring, ", health);
    }
}
