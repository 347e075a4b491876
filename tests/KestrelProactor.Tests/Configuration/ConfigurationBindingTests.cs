using System.Net;
using KestrelProactor.Internal;
using KestrelProactor.Tests.Infrastructure;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Server.Kestrel.Transport.Sockets;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Options;

namespace KestrelProactor.Tests.Configuration;

/// <summary>
/// Options from configuration (<c>UseProactorTransport(IConfiguration)</c> and the hosting startup, which reads the
/// <c>Kestrel:Proactor</c> section): bound, validated when the host starts, and registered once, after the socket
/// transport, whichever of the two runs first.
/// </summary>
public sealed class ConfigurationBindingTests
{
    private static WebApplicationBuilder CreateBuilder(params string[] args)
    {
        WebApplicationBuilder builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions { Args = args });
        builder.WebHost.UseKestrel(k => k.Listen(IPAddress.Loopback, 0));
        return builder;
    }

    /// <summary>
    /// The full builder: CreateSlimBuilder does not run hosting startups. Its content root is the test's output
    /// folder, which holds no appsettings.json.
    /// </summary>
    private static WebApplicationBuilder CreateFullBuilder(params string[] args)
    {
        WebApplicationBuilder builder = WebApplication.CreateBuilder(new WebApplicationOptions { Args = args, ContentRootPath = AppContext.BaseDirectory });
        builder.WebHost.UseKestrel(k => k.Listen(IPAddress.Loopback, 0));
        return builder;
    }

    /// <summary>Invalid options surface as soon as the host resolves the transport: at Build, before any bind.</summary>
    private static async Task BuildAndStartAsync(WebApplicationBuilder builder)
    {
        await using WebApplication app = builder.Build();
        await app.StartAsync().DefaultTimeout();
        await app.StopAsync().DefaultTimeout();
    }

    private static async Task<string> GetBackendAsync(WebApplication app)
    {
        string address = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
        using var client = new HttpClient { BaseAddress = new Uri(address), Timeout = TestTimeouts.Default };
        return await client.GetStringAsync("/backend", TestContext.Current.CancellationToken).DefaultTimeout();
    }

    private static void MapBackend(WebApplication app)
        => app.MapGet("/backend", (HttpContext c) => c.Features.Get<IProactorConnectionFeature>()?.Backend ?? "sockets");

    [Fact]
    public async Task UseProactorTransport_WithConfigurationSection_BindsEveryKindOfValue()
    {
        WebApplicationBuilder builder = CreateBuilder(
            "--Kestrel:Proactor:DispatcherCount=1",
            "--Kestrel:Proactor:NoDelay=false",
            "--Kestrel:Proactor:MaxReadBufferSize=65536",
            "--Kestrel:Proactor:MaxWriteBufferSize=",
            "--Kestrel:Proactor:OutputCoalescingDelay=00:00:00.0002",
            "--Kestrel:Proactor:HandOffSpinTime=00:00:00.0001",
            "--Kestrel:Proactor:SubmissionQueuePolling=true",
            "--Kestrel:Proactor:SubmissionQueuePollingIdle=00:00:00.005",
            "--Kestrel:Proactor:DispatcherAffinity=true",
            "--Kestrel:Proactor:AcceptOnEveryDispatcher=true",
            "--Kestrel:Proactor:AllowSocketTransportFallback=false");
        builder.WebHost.UseProactorTransport(builder.Configuration.GetSection(ProactorTransportOptions.ConfigurationSectionName));
        await using WebApplication app = builder.Build();
        MapBackend(app);

        await app.StartAsync().DefaultTimeout();
        ProactorTransportOptions options = app.Services.GetRequiredService<IOptions<ProactorTransportOptions>>().Value;
        string backend = await GetBackendAsync(app);
        await app.StopAsync().DefaultTimeout();

        Assert.Equal(1, options.DispatcherCount);
        Assert.False(options.NoDelay);
        Assert.Equal(65536, options.MaxReadBufferSize);
        Assert.Null(options.MaxWriteBufferSize);
        Assert.Equal(TimeSpan.FromMicroseconds(200), options.OutputCoalescingDelay);
        Assert.Equal(TimeSpan.FromMicroseconds(100), options.HandOffSpinTime);
        Assert.True(options.SubmissionQueuePolling);
        Assert.Equal(TimeSpan.FromMilliseconds(5), options.SubmissionQueuePollingIdle);
        Assert.True(options.DispatcherAffinity);
        Assert.True(options.AcceptOnEveryDispatcher);
        Assert.False(options.AllowSocketTransportFallback);
        Assert.Equal(OperatingSystem.IsLinux() ? "io_uring" : "sockets", backend);
    }

    /// <summary>
    /// Unset, the dispatcher count follows the scheduling mode: one per two processors in the thread-pool mode (the
    /// pool's threads run the application and need cores of their own), one per processor inline. A value from
    /// configuration or code wins either way. Checked on the running backend, not only on the options object.
    /// </summary>
    [Theory]
    [InlineData(null, null)]
    [InlineData("true", null)]
    [InlineData(null, "3")]
    [InlineData("true", "3")]
    public async Task DispatcherCount_Unset_FollowsSchedulingMode_SetWins(string? inline, string? count)
    {
        Assert.SkipUnless(OperatingSystem.IsLinux() || OperatingSystem.IsWindows(), "a native backend");
        var args = new List<string> { "--Kestrel:Proactor:AllowSocketTransportFallback=false" };
        if (inline is not null)
        {
            args.Add($"--Kestrel:Proactor:UnsafePreferInlineScheduling={inline}");
        }

        if (count is not null)
        {
            args.Add($"--Kestrel:Proactor:DispatcherCount={count}");
        }

        WebApplicationBuilder builder = CreateBuilder([.. args]);
        builder.WebHost.UseProactorTransport(builder.Configuration.GetSection(ProactorTransportOptions.ConfigurationSectionName));
        await using WebApplication app = builder.Build();
        await app.StartAsync().DefaultTimeout();
        int running = app.Services.GetServices<IConnectionListenerFactory>().OfType<ProactorTransportFactory>().Single().Backend!.Dispatchers.Length;
        await app.StopAsync().DefaultTimeout();

        int processors = Environment.ProcessorCount;
        int expected = count is not null ? int.Parse(count) : inline is not null ? processors : Math.Max(1, processors / 2);
        Assert.Equal(expected, running);
    }

    [Fact]
    public void FallbackSocketOptions_IOQueues_FromASetDispatcherCountOnly()
    {
        int socketDefault = new SocketTransportOptions().IOQueueCount;
        Assert.Equal(socketDefault, ProactorTransportFactory.CreateFallbackSocketOptions(new ProactorTransportOptions()).IOQueueCount);
        Assert.Equal(socketDefault, ProactorTransportFactory.CreateFallbackSocketOptions(new ProactorTransportOptions { UnsafePreferInlineScheduling = true }).IOQueueCount);
        Assert.Equal(3, ProactorTransportFactory.CreateFallbackSocketOptions(new ProactorTransportOptions { DispatcherCount = 3 }).IOQueueCount);
        Assert.Equal(16, ProactorTransportFactory.CreateFallbackSocketOptions(new ProactorTransportOptions { DispatcherCount = 40 }).IOQueueCount);
        var options = ProactorTransportFactory.CreateFallbackSocketOptions(new ProactorTransportOptions { NoDelay = false, Backlog = 77, MaxReadBufferSize = 1234, MaxWriteBufferSize = null, UnsafePreferInlineScheduling = true });
        Assert.False(options.NoDelay);
        Assert.Equal(77, options.Backlog);
        Assert.Equal(1234, options.MaxReadBufferSize);
        Assert.Null(options.MaxWriteBufferSize);
        Assert.True(options.UnsafePreferInlineScheduling);
    }

    [Theory]
    [InlineData(1, false, 1)]
    [InlineData(2, false, 1)]
    [InlineData(3, false, 1)]
    [InlineData(16, false, 8)]
    [InlineData(1, true, 1)]
    [InlineData(2, true, 2)]
    [InlineData(16, true, 16)]
    public void DefaultDispatcherCount_HalfTheProcessorsUnlessInline(int processors, bool inline, int expected)
        => Assert.Equal(expected, ProactorTransportOptions.DefaultDispatcherCount(processors, inline));

    [Theory]
    [InlineData("DispatcherCount", "300", "ProactorTransportOptions.DispatcherCount is 300; allowed: 1 to 256.")]
    [InlineData("SubmissionQueueSize", "3", "ProactorTransportOptions.SubmissionQueueSize is 3; allowed: a power of two from 4 to 32768.")]
    [InlineData("CompletionQueueSize", "128", "ProactorTransportOptions.CompletionQueueSize is 128; allowed: 0 (automatic), or a power of two from SubmissionQueueSize (256) to 1048576.")]
    [InlineData("ReceiveBufferCount", "1000", "ProactorTransportOptions.ReceiveBufferCount is 1000; allowed: a power of two from 2 to 32768.")]
    [InlineData("ReceiveBufferSize", "100", "ProactorTransportOptions.ReceiveBufferSize is 100; allowed: 512 to 1048576.")]
    [InlineData("MaxReadBufferSize", "-1", "ProactorTransportOptions.MaxReadBufferSize is -1; allowed: null, 0 (unbounded) or a positive number of bytes.")]
    [InlineData("Backlog", "0", "ProactorTransportOptions.Backlog is 0; allowed: 1 or more.")]
    [InlineData("ZeroCopySendThreshold", "-1", "ProactorTransportOptions.ZeroCopySendThreshold is -1; allowed: 0 (off), or a positive number of bytes.")]
    [InlineData("OutputCoalescingDelay", "00:00:00.01", "ProactorTransportOptions.OutputCoalescingDelay is 00:00:00.0100000; allowed: 0 (off) to 1 millisecond.")]
    [InlineData("HandOffSpinTime", "00:00:00.002", "ProactorTransportOptions.HandOffSpinTime is 00:00:00.0020000; allowed: 0 (off) to 1 millisecond.")]
    [InlineData("SubmissionQueuePollingIdle", "00:00:00.0005", "ProactorTransportOptions.SubmissionQueuePollingIdle is 00:00:00.0005000; allowed: 1 millisecond to 10 seconds, in whole milliseconds.")]
    [InlineData("SubmissionQueuePollingIdle", "00:00:11", "ProactorTransportOptions.SubmissionQueuePollingIdle is 00:00:11; allowed: 1 millisecond to 10 seconds, in whole milliseconds.")]
    public async Task Start_WithOptionOutOfRange_FailsNamingOptionAndAllowedValues(string option, string value, string expected)
    {
        WebApplicationBuilder builder = CreateBuilder($"--Kestrel:Proactor:{option}={value}");
        builder.WebHost.UseProactorTransport(builder.Configuration.GetSection(ProactorTransportOptions.ConfigurationSectionName));

        var error = await Assert.ThrowsAsync<OptionsValidationException>(() => BuildAndStartAsync(builder));

        Assert.Equal(expected, Assert.Single(error.Failures));
    }

    [Fact]
    public async Task Start_WithMisspeltOption_FailsNamingTheKey()
    {
        WebApplicationBuilder builder = CreateBuilder("--Kestrel:Proactor:DispatcherCont=2");
        builder.WebHost.UseProactorTransport(builder.Configuration.GetSection(ProactorTransportOptions.ConfigurationSectionName));

        var error = await Assert.ThrowsAsync<InvalidOperationException>(() => BuildAndStartAsync(builder));

        Assert.Contains("'DispatcherCont'", error.Message);
        Assert.Contains(nameof(ProactorTransportOptions), error.Message);
    }

    [Fact]
    public async Task Start_WithOptionOutOfRangeInCode_FailsNamingOption()
    {
        WebApplicationBuilder builder = CreateBuilder();
        builder.WebHost.UseProactorTransport(o => o.ReceiveBufferSize = 1);

        var error = await Assert.ThrowsAsync<OptionsValidationException>(() => BuildAndStartAsync(builder));

        Assert.Equal("ProactorTransportOptions.ReceiveBufferSize is 1; allowed: 512 to 1048576.", error.Message);
    }

    [Fact]
    public async Task HostingStartup_NamedInHostSettings_ServesOverProactorWithSectionOptions()
    {
        // What ASPNETCORE_HOSTINGSTARTUPASSEMBLIES=KestrelProactor does, in process: the application never calls the API.
        WebApplicationBuilder builder = CreateFullBuilder(
            "--hostingStartupAssemblies=KestrelProactor",
            "--Kestrel:Proactor:DispatcherCount=1",
            "--Kestrel:Proactor:AllowSocketTransportFallback=false");
        await using WebApplication app = builder.Build();
        MapBackend(app);

        await app.StartAsync().DefaultTimeout();
        string backend = await GetBackendAsync(app);
        IConnectionListenerFactory[] factories = app.Services.GetServices<IConnectionListenerFactory>().ToArray();
        await app.StopAsync().DefaultTimeout();

        Assert.Equal(OperatingSystem.IsLinux() ? "io_uring" : "sockets", backend);
        Assert.Equal(1, app.Services.GetRequiredService<IOptions<ProactorTransportOptions>>().Value.DispatcherCount);
        Assert.Single(factories, f => f is ProactorTransportFactory);
    }

    [Fact]
    public async Task HostingStartup_AndUseProactorTransport_RegisterOneFactory()
    {
        WebApplicationBuilder builder = CreateFullBuilder("--hostingStartupAssemblies=KestrelProactor");
        Assert.Single(builder.Services, d => d.ImplementationType == typeof(ProactorTransportFactory));
        builder.WebHost.UseProactorTransport(o => o.DispatcherCount = 1);
        await using WebApplication app = builder.Build();
        MapBackend(app);

        await app.StartAsync().DefaultTimeout();
        string backend = await GetBackendAsync(app);
        IConnectionListenerFactory[] factories = app.Services.GetServices<IConnectionListenerFactory>().ToArray();
        await app.StopAsync().DefaultTimeout();

        Assert.Equal(OperatingSystem.IsLinux() ? "io_uring" : "sockets", backend);
        Assert.Single(factories, f => f is ProactorTransportFactory);
        Assert.Equal(1, app.Services.GetRequiredService<IOptions<ProactorTransportOptions>>().Value.DispatcherCount);
    }

    [Fact]
    public void Add_BeforeKestrelRegistersSockets_KeepsProactorLast()
    {
        // A hosting startup's services are added before UseKestrel's TryAdd of the socket transport.
        var services = new ServiceCollection();

        ProactorServices.Add(services, configuration: null, configureOptions: null);
        services.TryAddSingleton<IConnectionListenerFactory, SocketTransportFactory>();
        ProactorServices.Add(services, configuration: null, configureOptions: null);

        Type?[] order = services.Where(d => d.ServiceType == typeof(IConnectionListenerFactory)).Select(d => d.ImplementationType).ToArray();
        Assert.Equal([typeof(SocketTransportFactory), typeof(ProactorTransportFactory)], order);
    }
}
