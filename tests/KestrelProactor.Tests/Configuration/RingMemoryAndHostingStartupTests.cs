using System.Collections.Concurrent;
using System.Net;
using KestrelProactor.Internal;
using KestrelProactor.Tests.Infrastructure;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace KestrelProactor.Tests.Configuration;

/// <summary>
/// Options whose values are each in range but together ask for more ring memory than the process has are refused with
/// a message that says so; the hosting startup says, once at start, that it took the socket transport's place.
/// </summary>
public sealed class RingMemoryAndHostingStartupTests
{
    [Fact]
    public void Validate_RingMemoryBeyondWhatTheProcessHas_FailsNamingTheProduct()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "Buffer rings are io_uring's.");
        // Each within its own range: 256 x 32768 x 1 MiB = 8 TiB in all.
        var options = new ProactorTransportOptions { DispatcherCount = 256, ReceiveBufferCount = 32768, ReceiveBufferSize = 1 << 20 };

        bool invalid = ProactorOptionsValidator.TryGetError(options, out string? name, out object? value, out string? message);

        Assert.True(invalid);
        Assert.Equal("ProactorTransportOptions.ReceiveBufferCount", name);
        Assert.Equal(256L * 32768 * (1 << 20), value);
        Assert.Contains("DispatcherCount x ReceiveBufferCount x ReceiveBufferSize = 256 x 32768 x 1048576 = 8796093022208 bytes (8388608 MiB)", message);
        Assert.Contains($"at most the memory available to the process, {GC.GetGCMemoryInfo().TotalAvailableMemoryBytes} bytes", message);
        var thrown = Assert.Throws<ArgumentOutOfRangeException>(() => ProactorOptionsValidator.Validate(options));
        Assert.Contains(message!, thrown.Message);
    }

    [Fact]
    public void Validate_DefaultsAndCopyingTier_Pass()
    {
        // The copying tier maps no ring: the product does not apply to it.
        var copying = new ProactorTransportOptions { DispatcherCount = 256, ReceiveBufferCount = 32768, ReceiveBufferSize = 1 << 20, DisableBufferRing = true };

        Assert.False(ProactorOptionsValidator.TryGetError(new ProactorTransportOptions(), out _, out _, out string? defaultsMessage), defaultsMessage);
        Assert.False(ProactorOptionsValidator.TryGetError(copying, out _, out _, out string? copyingMessage), copyingMessage);
    }

    [Fact]
    public async Task HostStart_RingMemoryBeyondWhatTheProcessHas_StopsWithTheMessage()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "Buffer rings are io_uring's.");
        WebApplicationBuilder builder = WebApplication.CreateSlimBuilder();
        builder.WebHost.UseKestrel(k => k.Listen(IPAddress.Loopback, 0));
        builder.WebHost.UseProactorTransport(o =>
        {
            o.DispatcherCount = 256;
            o.ReceiveBufferCount = 32768;
            o.ReceiveBufferSize = 1 << 20;
        });

        OptionsValidationException error = await Assert.ThrowsAsync<OptionsValidationException>(() => StartAndStopAsync(builder));

        Assert.Contains("The receive buffer rings take DispatcherCount x ReceiveBufferCount x ReceiveBufferSize", error.Message);
    }

    [Fact]
    public async Task HostingStartup_ApplicationConfiguredSocketTransport_WarnsThatItsOptionsDoNotApply()
    {
        var logs = new Recorder();
        WebApplicationBuilder builder = CreateBuilderWithHostingStartup(logs);
        builder.WebHost.UseSockets(o => o.Backlog = 100);

        await StartAndStopAsync(builder);

        Recorder.Entry entry = Assert.Single(logs.Entries, e => e.Name == "SocketTransportReplaced");
        Assert.Equal("KestrelProactor", entry.Category);
        Assert.Equal(LogLevel.Warning, entry.Level);
        Assert.Contains("SocketTransportOptions", entry.Message);
    }

    [Fact]
    public async Task HostingStartup_ApplicationLeftTheSocketTransportAlone_SaysItReplacedIt()
    {
        var logs = new Recorder();
        WebApplicationBuilder builder = CreateBuilderWithHostingStartup(logs);
        // A bare UseSockets() registers what UseKestrel does: the same transport, no options of the application's.
        builder.WebHost.UseSockets();

        await StartAndStopAsync(builder);

        Recorder.Entry entry = Assert.Single(logs.Entries, e => e.Name == "SocketTransportReplaced");
        Assert.Equal(LogLevel.Information, entry.Level);
        Assert.Contains("in place of the socket transport", entry.Message);
    }

    [Fact]
    public async Task UseProactorTransport_WithoutHostingStartup_LogsNoReplacement()
    {
        var logs = new Recorder();
        WebApplicationBuilder builder = CreateBuilder(logs);
        builder.WebHost.UseProactorTransport(o => o.DispatcherCount = 1);

        await StartAndStopAsync(builder);

        Assert.DoesNotContain(logs.Entries, e => e.Name == "SocketTransportReplaced");
    }

    private static WebApplicationBuilder CreateBuilderWithHostingStartup(Recorder logs)
        => CreateBuilder(logs, "--hostingStartupAssemblies=KestrelProactor", "--Kestrel:Proactor:DispatcherCount=1");

    private static WebApplicationBuilder CreateBuilder(Recorder logs, params string[] args)
    {
        WebApplicationBuilder builder = WebApplication.CreateBuilder(new WebApplicationOptions { Args = args, ContentRootPath = AppContext.BaseDirectory });
        builder.Logging.ClearProviders();
        builder.Logging.AddProvider(logs);
        builder.WebHost.UseKestrel(k => k.Listen(IPAddress.Loopback, 0));
        return builder;
    }

    private static async Task StartAndStopAsync(WebApplicationBuilder builder)
    {
        await using WebApplication app = builder.Build();
        await app.StartAsync().DefaultTimeout();
        await app.StopAsync().DefaultTimeout();
    }

    private sealed class Recorder : ILoggerProvider
    {
        private readonly ConcurrentQueue<Entry> _entries = new();

        public IReadOnlyCollection<Entry> Entries => [.. _entries];

        public ILogger CreateLogger(string categoryName) => new Logger(this, categoryName);

        public void Dispose()
        {
        }

        public sealed record Entry(string Category, LogLevel Level, string? Name, string Message);

        private sealed class Logger(Recorder owner, string category) : ILogger
        {
            public IDisposable? BeginScope<TState>(TState state)
                where TState : notnull => null;

            public bool IsEnabled(LogLevel logLevel) => true;

            public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
                => owner._entries.Enqueue(new Entry(category, logLevel, eventId.Name, formatter(state, exception)));
        }
    }
}
