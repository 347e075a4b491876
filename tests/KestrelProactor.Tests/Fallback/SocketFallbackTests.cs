using System.Net;
using KestrelProactor.Tests.Infrastructure;

namespace KestrelProactor.Tests.Fallback;

/// <summary>
/// The transport where io_uring is denied (a container's seccomp profile, a hardened kernel): with fallback on it
/// serves through Kestrel's socket transport and logs one warning naming why; with fallback off it refuses to
/// start and says why. The host denies io_uring to itself with a seccomp filter before Kestrel starts.
/// </summary>
public sealed class SocketFallbackTests
{
    // ProactorLog.FallingBackToSockets, as the simple console logger prints its category and event id.
    private const string FallbackWarning = "warn: KestrelProactor[2]";

    [Theory]
    [InlineData("EPERM", "1")]
    [InlineData("ENOSYS", "38")]
    public async Task DenyFilter_MakesIoUringSetupFailWithThatErrno(string errno, string number)
    {
        // Checks the test's own tool: without this, a broken filter would make the fallback tests meaningless.
        await using var host = FallbackHostProcess.Start("--deny-io-uring", errno, "--probe");
        await host.WaitForExitAsync();

        Assert.Equal(0, host.ExitCode);
        Assert.Contains($"FALLBACKHOST PROBE io_uring_setup=errno={number}", host.Output);
    }

    [Theory]
    [InlineData("EPERM")]
    [InlineData("ENOSYS")]
    public async Task IoUringDenied_WithFallback_ServesOverSocketsAndWarnsWithReason(string errno)
    {
        await using var host = FallbackHostProcess.Start("--deny-io-uring", errno);
        var ready = await host.WaitForReadyAsync();

        using var client = new HttpClient { Timeout = TestTimeouts.Default };
        using var response = await client.GetAsync(new Uri(new Uri(ready["url"]), "/"), TestContext.Current.CancellationToken).DefaultTimeout();
        string body = await response.Content.ReadAsStringAsync(TestContext.Current.CancellationToken).DefaultTimeout();
        await host.StopAsync();

        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.Equal("ok", body);
        Assert.Equal("sockets", ready["backend"]);
        Assert.Contains(errno, ready["reason"]);
        Assert.Equal(0, host.ExitCode);
        string warning = Assert.Single(host.Output.Split('\n'), line => line.Contains(FallbackWarning, StringComparison.Ordinal));
        Assert.Contains(errno, warning);
    }

    [Theory]
    [InlineData("EPERM")]
    [InlineData("ENOSYS")]
    public async Task IoUringDenied_WithoutFallback_ExitsNonZeroNamingReason(string errno)
    {
        await using var host = FallbackHostProcess.Start("--deny-io-uring", errno, "--no-fallback");
        await host.WaitForExitAsync();

        Assert.NotEqual(0, host.ExitCode);
        Assert.DoesNotContain("FALLBACKHOST READY", host.Output);
        Assert.Contains(nameof(ProactorUnavailableException), host.Output);
        Assert.Contains(errno, host.Output);
        Assert.DoesNotContain(FallbackWarning, host.Output);
    }

    [Fact]
    public async Task IoUringAllowed_UsesIoUringBackend()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "io_uring is Linux only.");
        await using var host = FallbackHostProcess.Start();
        var ready = await host.WaitForReadyAsync();

        using var client = new HttpClient { Timeout = TestTimeouts.Default };
        using var response = await client.GetAsync(new Uri(new Uri(ready["url"]), "/"), TestContext.Current.CancellationToken).DefaultTimeout();
        await host.StopAsync();

        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.Equal("io_uring", ready["backend"]);
        Assert.DoesNotContain(FallbackWarning, host.Output);
    }
}
