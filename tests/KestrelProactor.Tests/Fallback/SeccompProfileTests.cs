using System.Net;
using KestrelProactor.Tests.Infrastructure;

namespace KestrelProactor.Tests.Fallback;

/// <summary>
/// samples/seccomp/kestrelproactor.json, the profile the README tells container users to run with: the child host
/// compiles it into a filter on itself before Kestrel starts, as a container runtime would before the entry point.
/// Under it the transport runs on io_uring, serves and stops cleanly; without its three io_uring calls (what the
/// runtimes' default profiles do) the same site falls back and says the profile is why.
/// </summary>
public sealed class SeccompProfileTests
{
    private const string IoUringCalls = "io_uring_setup,io_uring_enter,io_uring_register";

    private static string ProfilePath => Path.Combine(RepositoryPaths.Root, "samples", "seccomp", "kestrelproactor.json");

    [Fact]
    public async Task SampleProfile_HostServesOverIoUringAndStopsCleanly()
    {
        await using var host = FallbackHostProcess.Start("--seccomp-profile", ProfilePath);
        var ready = await host.WaitForReadyAsync();

        (HttpStatusCode status, string body, string health) = await GetAsync(ready["url"]);
        await host.StopAsync();

        Assert.Equal("io_uring", ready["backend"]);
        Assert.Equal(HttpStatusCode.OK, status);
        Assert.Equal("ok", body);
        Assert.StartsWith("Healthy: io_uring, ", health);
        Assert.Equal(0, host.ExitCode);
    }

    [Fact]
    public async Task SampleProfileWithoutIoUring_HostFallsBackAndNamesTheProfile()
    {
        await using var host = FallbackHostProcess.Start("--seccomp-profile", ProfilePath, "--drop-syscalls", IoUringCalls);
        var ready = await host.WaitForReadyAsync();

        (HttpStatusCode status, string body, string health) = await GetAsync(ready["url"]);
        await host.StopAsync();

        Assert.Equal("sockets", ready["backend"]);
        Assert.StartsWith("io_uring_setup failed: EPERM (denied by this process's seccomp filter: ", ready["reason"]);
        Assert.Equal(HttpStatusCode.OK, status);
        Assert.Equal("ok", body);
        Assert.StartsWith("Degraded: ", health);
        Assert.Equal(0, host.ExitCode);
    }

    private static async Task<(HttpStatusCode Status, string Body, string Health)> GetAsync(string url)
    {
        using var client = new HttpClient { BaseAddress = new Uri(url), Timeout = TestTimeouts.Default };
        using HttpResponseMessage response = await client.GetAsync("/").DefaultTimeout();
        string body = await response.Content.ReadAsStringAsync().DefaultTimeout();
        string health = await client.GetStringAsync("/healthz").DefaultTimeout();
        return (response.StatusCode, body, health);
    }
}
