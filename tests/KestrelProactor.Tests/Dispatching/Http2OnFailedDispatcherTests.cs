using System.Net;
using KestrelProactor.Dispatching;
using KestrelProactor.Tests.Infrastructure;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;

namespace KestrelProactor.Tests.Dispatching;

/// <summary>
/// An HTTP/2 connection whose dispatcher fails while streams send. Found by the fault-injection runs
/// (tests/fault-injection/run.sh, seeds that kill a dispatcher): the released connection completed its output with the
/// failure, Kestrel's HTTP/2 frame writer saw its next flush throw and left a stream that never completed, so Kestrel's
/// processing of the connection never returned, the host's stop waited its whole timeout, and the streams' pool blocks
/// never came back.
/// </summary>
[Collection(DispatcherHookCollection.Name)]
public sealed class Http2OnFailedDispatcherTests
{
    [Fact]
    public async Task DispatcherFailsWhileHttp2StreamsSend_KestrelFinishesTheConnection()
    {
        // Each attempt kills the connection's dispatcher while four streams send; without the fix one attempt in two to six hung (the flush that throws races Kestrel seeing the input end).
        for (int attempt = 0; attempt < 16; attempt++)
        {
            var processed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            WebApplicationBuilder builder = WebApplication.CreateSlimBuilder();
            builder.WebHost.UseKestrel(k => k.Listen(IPAddress.Loopback, 0, o =>
            {
                o.Protocols = HttpProtocols.Http2;
                o.Use(next => async connection =>
                {
                    try
                    {
                        await next(connection);
                    }
                    finally
                    {
                        processed.TrySetResult();
                    }
                });
            }));
            builder.WebHost.UseProactorTransport(o => TransportFactories.Configure(TransportKind.Proactor, o, o => o.DispatcherCount = 2));
            WebApplication app = builder.Build();
            app.MapGet("/stream", static async (HttpContext context) =>
            {
                var chunk = new byte[16 * 1024];
                while (!context.RequestAborted.IsCancellationRequested)
                {
                    await context.Response.Body.WriteAsync(chunk, context.RequestAborted);
                }
            });
            await app.StartAsync().DefaultTimeout();
            ProactorDispatcher[] dispatchers = app.Services.GetServices<IConnectionListenerFactory>().OfType<ProactorTransportFactory>().Single().Backend!.Dispatchers;
            string url = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
            using var client = new HttpClient { DefaultRequestVersion = HttpVersion.Version20, DefaultVersionPolicy = HttpVersionPolicy.RequestVersionExact };
            using var stop = new CancellationTokenSource();
            Task[] streams = Enumerable.Range(0, 4).Select(_ => ReadUntilItEndsAsync(client, url + "/stream", stop.Token)).ToArray();
            await DispatcherEndDrainTests.WaitUntilAsync(() => dispatchers.Any(d => d.OpenConnections == 1));
            ProactorDispatcher serving = dispatchers.First(d => d.OpenConnections == 1);
            // Streams are sending: the frame writer flushes again after the failure.
            await Task.Delay(50, TestContext.Current.CancellationToken);
            try
            {
                ProactorDispatcher.TestLoopHook = d =>
                {
                    if (ReferenceEquals(d, serving))
                    {
                        throw new InvalidOperationException("injected ring failure");
                    }
                };
                serving.Schedule(static _ => { }, null);
                await serving.Ended.DefaultTimeout();
            }
            finally
            {
                ProactorDispatcher.TestLoopHook = null;
            }

            bool finished = await Task.WhenAny(processed.Task, Task.Delay(TestTimeouts.Default, TestContext.Current.CancellationToken)) == processed.Task;
            stop.Cancel();
            await Task.WhenAll(streams).DefaultTimeout();
            try
            {
                using var stopTimeout = new CancellationTokenSource(TimeSpan.FromSeconds(5));
                await app.StopAsync(stopTimeout.Token).WaitAsync(TimeSpan.FromSeconds(10), TestContext.Current.CancellationToken);
                await app.DisposeAsync().AsTask().DefaultTimeout();
            }
            catch (Exception) when (!finished)
            {
                // The hung connection keeps the host from stopping cleanly; the assertion below says why.
            }

            Assert.True(finished, $"attempt {attempt}: Kestrel never finished the HTTP/2 connection of the failed dispatcher");
        }
    }

    private static async Task ReadUntilItEndsAsync(HttpClient client, string url, CancellationToken cancellationToken)
    {
        try
        {
            using HttpResponseMessage response = await client.GetAsync(url, HttpCompletionOption.ResponseHeadersRead, cancellationToken);
            await using Stream body = await response.Content.ReadAsStreamAsync(cancellationToken);
            var buffer = new byte[64 * 1024];
            while (await body.ReadAsync(buffer, cancellationToken) > 0)
            {
            }
        }
        catch (Exception ex) when (ex is HttpRequestException or IOException or OperationCanceledException)
        {
            // The connection died with its dispatcher: expected.
        }
    }
}
