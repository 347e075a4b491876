using System.Net;
using KestrelProactor.Tests.Infrastructure;

namespace KestrelProactor.Tests.DropIn;

/// <summary>
/// samples/DropIn is a Razor Pages site built with no reference to the transport. These tests start its built dll
/// with the environment variables of docs/operations.md and check that the proactor, not the socket transport,
/// bound its endpoint: the start-up line "backend io_uring" is only logged by a proactor bind, and fallback is
/// switched off through the same environment so a silent fallback cannot pass.
/// </summary>
[Collection(SerialCollection.Name)]
public sealed class DropInSiteTests
{
    private const string StartedLine = "Proactor transport started: backend io_uring";
    private const string ListeningPrefix = "Now listening on: ";

    private static string SiteDirectory => Path.Combine(
        RepositoryPaths.Root, "samples", "DropIn", "bin", RepositoryPaths.Configuration, RepositoryPaths.TargetFramework);

    /// <summary>The variables an operator sets: load the assembly with the startup hook, then name it as a hosting startup.</summary>
    private static Dictionary<string, string?> DropInEnvironment(params (string Key, string Value)[] extra)
    {
        var environment = new Dictionary<string, string?>
        {
            ["DOTNET_STARTUP_HOOKS"] = typeof(ProactorTransportFactory).Assembly.Location,
            ["ASPNETCORE_HOSTINGSTARTUPASSEMBLIES"] = "KestrelProactor",
            ["ASPNETCORE_URLS"] = "http://127.0.0.1:0",
        };
        foreach ((string key, string value) in extra)
        {
            environment[key] = value;
        }

        return environment;
    }

    private static ChildProcess StartSite(Dictionary<string, string?> environment)
    {
        string site = Path.Combine(SiteDirectory, "DropIn.dll");
        Assert.True(File.Exists(site), $"samples/DropIn was not built at {site}.");
        return ChildProcess.Start("dotnet", ["exec", site], SiteDirectory, environment);
    }

    [Fact]
    public async Task BuiltSite_WithHostingStartupVariables_ServesOverIoUring()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "The io_uring backend is Linux only.");
        await using ChildProcess site = StartSite(DropInEnvironment(
            ("Kestrel__Proactor__AllowSocketTransportFallback", "false"),
            ("Kestrel__Proactor__DispatcherCount", "1")));

        string listening = await site.WaitForLineAsync(l => l.Contains(ListeningPrefix, StringComparison.Ordinal), TestTimeouts.Long);
        var baseAddress = new Uri(listening[(listening.IndexOf(ListeningPrefix, StringComparison.Ordinal) + ListeningPrefix.Length)..].Trim());
        using var client = new HttpClient { BaseAddress = baseAddress, Timeout = TestTimeouts.Default };
        using HttpResponseMessage page = await client.GetAsync("/", TestContext.Current.CancellationToken).DefaultTimeout();
        string body = await page.Content.ReadAsStringAsync(TestContext.Current.CancellationToken).DefaultTimeout();
        await site.StopAsync(TestTimeouts.Long);

        Assert.Equal(HttpStatusCode.OK, page.StatusCode);
        Assert.Contains("An ordinary Razor Pages site", body);
        string started = Assert.Single(site.Output.Split('\n'), l => l.Contains(StartedLine, StringComparison.Ordinal));
        // DispatcherCount came from the environment through the Kestrel:Proactor section.
        Assert.Contains("1 dispatchers", started);
        Assert.DoesNotContain("Hosting startup assembly exception", site.Output);
        Assert.Equal(0, site.ExitCode);
    }

    [Fact]
    public async Task BuiltSite_WithoutStartupHook_LogsThatTheAssemblyCannotLoad()
    {
        // The documented failure mode: the hosting startup alone names an assembly the app's deps.json lacks.
        Dictionary<string, string?> environment = DropInEnvironment();
        environment["DOTNET_STARTUP_HOOKS"] = null;
        await using ChildProcess site = StartSite(environment);

        await site.WaitForLineAsync(l => l.Contains(ListeningPrefix, StringComparison.Ordinal), TestTimeouts.Long);
        await site.StopAsync(TestTimeouts.Long);

        Assert.Contains("Hosting startup assembly exception", site.Output);
        Assert.Contains("Could not load file or assembly 'KestrelProactor", site.Output);
        Assert.DoesNotContain(StartedLine, site.Output);
    }

    [Theory]
    [InlineData("Kestrel__Proactor__DispatcherCount", "0", "ProactorTransportOptions.DispatcherCount is 0; allowed: 1 to 256")]
    [InlineData("Kestrel__Proactor__SubmissionQueueSize", "100", "ProactorTransportOptions.SubmissionQueueSize is 100; allowed: a power of two from 4 to 32768")]
    [InlineData("Kestrel__Proactor__DispatcherCont", "2", "'DispatcherCont'")]
    [InlineData("Kestrel__Proactor__Backlog", "many", "Kestrel:Proactor:Backlog")]
    public async Task BuiltSite_WithBadOptionInEnvironment_ExitsNamingTheOption(string key, string value, string expected)
    {
        await using ChildProcess site = StartSite(DropInEnvironment((key, value)));

        await site.WaitForExitAsync(TestTimeouts.Long);

        Assert.NotEqual(0, site.ExitCode);
        Assert.Contains(expected, site.Output);
        Assert.DoesNotContain(ListeningPrefix, site.Output);
    }
}
