using System.Diagnostics;
using System.Net;
using KestrelProactor.Tests.Infrastructure;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;

namespace KestrelProactor.Tests.Reliability;

/// <summary>
/// A timed HTTP/2 load generator stops with streams in flight and drops its connections: the server's sends then
/// fail. The host must still stop promptly. It did not, about one stop in two, while the transport completed its
/// output with the send's error: Kestrel's HTTP/2 frame writer saw its flush throw and left a stream that never
/// completed, so the stop waited on it.
/// </summary>
[Collection(ReliabilityCollection.Name)]
public sealed class Http2AbruptEndTests
{
    private const string H2Load = "/usr/bin/h2load";

    [Theory]
    [InlineData(TransportKind.Proactor)]
    [InlineData(TransportKind.ProactorInline)]
    public async Task TimedH2LoadEndsWithStreamsInFlight_HostStopsPromptly(TransportKind kind)
    {
        Assert.SkipWhen(OperatingSystem.IsWindows(), "h2load is a Linux binary.");
        Assert.SkipUnless(File.Exists(H2Load), "h2load is not installed (apt-get install nghttp2-client).");

        // Three servers, each after two timed runs: without the fix at least one of them hung in most attempts.
        for (int attempt = 0; attempt < 3; attempt++)
        {
            WebApplicationBuilder builder = WebApplication.CreateSlimBuilder();
            builder.WebHost.UseKestrel(k => k.Listen(IPAddress.Loopback, 0, o => o.Protocols = HttpProtocols.Http2));
            builder.WebHost.UseProactorTransport(o => TransportFactories.Configure(kind, o));
            WebApplication app = builder.Build();
            app.MapGet("/plaintext", () => "Hello, World!");
            await app.StartAsync().DefaultTimeout();
            try
            {
                string url = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
                for (int run = 0; run < 2; run++)
                {
                    Assert.Equal(0, await RunH2LoadAsync("-D", "1", "-c", "64", "-m", "16", "-t", "2", url + "/plaintext"));
                }
            }
            finally
            {
                // The host's own shutdown time-out is 30 s: a stop that needs it has hung on a connection.
                var stopwatch = Stopwatch.StartNew();
                await app.StopAsync().WaitAsync(TimeSpan.FromSeconds(10));
                await app.DisposeAsync().AsTask().DefaultTimeout();
                Assert.True(stopwatch.Elapsed < TimeSpan.FromSeconds(10), $"The stop took {stopwatch.Elapsed}.");
            }
        }
    }

    private static async Task<int> RunH2LoadAsync(params string[] arguments)
    {
        var startInfo = new ProcessStartInfo(H2Load) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (string argument in arguments)
        {
            startInfo.ArgumentList.Add(argument);
        }

        using var process = Process.Start(startInfo)!;
        try
        {
            Task<string> stdout = process.StandardOutput.ReadToEndAsync(TestContext.Current.CancellationToken);
            Task<string> stderr = process.StandardError.ReadToEndAsync(TestContext.Current.CancellationToken);
            await process.WaitForExitAsync(TestContext.Current.CancellationToken).DefaultTimeout();
            await stdout.DefaultTimeout();
            await stderr.DefaultTimeout();
            return process.ExitCode;
        }
        finally
        {
            if (!process.HasExited)
            {
                process.Kill();
            }
        }
    }
}
