using System.Net;
using KestrelProactor.Dispatching;
using KestrelProactor.IoUring;
using KestrelProactor.Tests.Infrastructure;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;

namespace KestrelProactor.Tests.Operations;

/// <summary>
/// The whole transport with restricted rings, in every option preset: each one serves small, one-segment,
/// many-segment and echoed HTTP bodies and closes its connections, so every opcode, flag and register call the
/// preset uses went through a restricted ring. A refused one would fail a request, leave a connection open, or
/// switch a feature off (the refused-features list would name EACCES). Run alone: one preset has a polling thread.
/// </summary>
[Collection(PollingCollection.Name)]
public sealed class RestrictedTransportTests
{
    public static TheoryData<string> Presets =>
    [
        nameof(TransportKind.Proactor),
        nameof(TransportKind.ProactorInline),
        nameof(TransportKind.ProactorSingleShot),
        nameof(TransportKind.ProactorBasicTier),
        "ZeroCopySend",
        "SubmissionQueuePolling",
        "OutputCoalescing",
    ];

    [Theory]
    [MemberData(nameof(Presets))]
    public async Task Transport_WithRestrictedRings_ServesAndClosesConnections(string preset)
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "io_uring is Linux only.");
        WebApplication app = await StartAsync(preset);
        try
        {
            string url = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
            IoUringDispatcher[] dispatchers = Dispatchers(app);
            ProactorBackend backend = Factory(app).Backend!;
            byte[] upload = Enumerable.Range(0, 1 << 20).Select(i => (byte)(i * 7)).ToArray();

            using (var client = new HttpClient { Timeout = TestTimeouts.Default })
            {
                Assert.Equal("io_uring", await client.GetStringAsync(url + "/backend").DefaultTimeout());
                Assert.Equal(new string('m', 2000), await client.GetStringAsync(url + "/medium").DefaultTimeout());
                Assert.Equal(256 * 1024, (await client.GetByteArrayAsync(url + "/large").DefaultTimeout()).Length);
                using HttpResponseMessage echoed = await client.PostAsync(url + "/echo", new ByteArrayContent(upload)).DefaultTimeout();
                Assert.Equal(upload, await echoed.Content.ReadAsByteArrayAsync().DefaultTimeout());

                // The server ends this one: shutdown, close, and the cancel of its receive.
                using var last = new HttpRequestMessage(HttpMethod.Get, url + "/backend");
                last.Headers.ConnectionClose = true;
                using HttpResponseMessage lastResponse = await client.SendAsync(last).DefaultTimeout();
                Assert.Equal(HttpStatusCode.OK, lastResponse.StatusCode);
            }

            // Every connection was closed and released by its ring.
            await WaitUntilAsync(() => dispatchers.Sum(d => d.OpenConnections) == 0);

            Assert.All(dispatchers, d => Assert.True(d.Ring.IsRestricted, d.Ring.RestrictionsRefused));
            Assert.Contains(backend.FeatureSummary.Split(", "), f => f.StartsWith("restricted(", StringComparison.Ordinal));
            Assert.DoesNotContain(dispatchers.SelectMany(d => d.RefusedFeatures), f => f.Contains("EACCES", StringComparison.Ordinal) || f.StartsWith("RESTRICTIONS", StringComparison.Ordinal));
            Assert.All(dispatchers, d => Assert.False(d.HasFailed));
            Assert.Equal(0, dispatchers.Sum(d => d.HandlerFaults));
            if (preset == "ZeroCopySend")
            {
                Assert.Contains("send-zc>=1024", backend.FeatureSummary.Split(", "));
            }

            if (preset == "SubmissionQueuePolling")
            {
                Assert.Contains(backend.FeatureSummary.Split(", "), f => f.StartsWith("SQPOLL", StringComparison.Ordinal));
            }
        }
        finally
        {
            await app.StopAsync().DefaultTimeout();
            await app.DisposeAsync().AsTask().DefaultTimeout();
        }
    }

    private static void Configure(string preset, ProactorTransportOptions options)
    {
        TransportKind kind = Enum.TryParse(preset, out TransportKind parsed) ? parsed : TransportKind.Proactor;
        TransportFactories.Configure(kind, options);
        switch (preset)
        {
            case "ZeroCopySend":
                // One-segment bodies above this go out as SEND_ZC, many-segment ones as SENDMSG_ZC.
                options.ZeroCopySendThreshold = 1024;
                break;
            case "SubmissionQueuePolling":
                options.SubmissionQueuePolling = true;
                options.SubmissionQueuePollingIdle = TimeSpan.FromMilliseconds(1);
                options.DispatcherCount = 1;
                break;
            case "OutputCoalescing":
                options.OutputCoalescingDelay = TimeSpan.FromMicroseconds(200);
                break;
        }
    }

    private static async Task<WebApplication> StartAsync(string preset)
    {
        WebApplicationBuilder builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.WebHost.UseKestrel(k => k.Listen(IPAddress.Loopback, 0));
        builder.WebHost.UseProactorTransport(o => Configure(preset, o));
        WebApplication app = builder.Build();
        app.MapGet("/backend", (HttpContext c) => c.Features.Get<IProactorConnectionFeature>()?.Backend ?? "sockets");
        app.MapGet("/medium", () => new string('m', 2000));
        app.MapGet("/large", () => Results.Bytes(new byte[256 * 1024]));
        app.MapPost("/echo", async (HttpRequest request, HttpResponse response) =>
        {
            response.ContentType = "application/octet-stream";
            await request.Body.CopyToAsync(response.Body);
        });
        await app.StartAsync().DefaultTimeout();
        return app;
    }

    private static ProactorTransportFactory Factory(WebApplication app)
        => app.Services.GetServices<IConnectionListenerFactory>().OfType<ProactorTransportFactory>().Single();

    private static IoUringDispatcher[] Dispatchers(WebApplication app)
        => Factory(app).Backend!.Dispatchers.Cast<IoUringDispatcher>().ToArray();

    private static async Task WaitUntilAsync(Func<bool> condition)
    {
        using var deadline = new CancellationTokenSource(TestTimeouts.Default);
        while (!condition())
        {
            await Task.Delay(20, deadline.Token);
        }
    }
}
