using System.Net;
using System.Net.Http.Headers;
using KestrelProactor.Tests.Infrastructure;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;

namespace KestrelProactor.Tests.Dispatching;

/// <summary>
/// Every receive buffer lent to Kestrel comes back: after keep-alive, churned and aborted connections with
/// bodies large and small, the rings hold all their buffers again and no operation is left in flight.
/// </summary>
public class LentBufferAccountingTests
{
    [Theory]
    [InlineData(TransportKind.Proactor)]
    [InlineData(TransportKind.ProactorInline)]
    [InlineData(TransportKind.ProactorSingleShot)]
    public async Task MixedTraffic_AllConnectionsClosed_EveryLentBufferReturned(TransportKind kind)
    {
        // Arrange: a small ring so that a leak of a few buffers would show, and would starve the next requests.
        WebApplicationBuilder builder = WebApplication.CreateSlimBuilder();
        builder.WebHost.UseKestrel(k => { k.Listen(IPAddress.Loopback, 0); k.Limits.MaxRequestBodySize = null; });
        builder.WebHost.UseProactorTransport(o => TransportFactories.Configure(kind, o, o =>
        {
            o.ReceiveBufferCount = 64;
            o.ReceiveBufferSize = 2048;
        }));
        await using WebApplication app = builder.Build();
        app.MapGet("/json", () => Results.Json(new { message = "Hello, World!" }));
        app.MapPost("/sink", async (HttpRequest request) =>
        {
            long total = 0;
            var buffer = new byte[8192];
            int n;
            while ((n = await request.Body.ReadAsync(buffer)) > 0)
            {
                total += n;
            }

            return total;
        });
        await app.StartAsync().DefaultTimeout();
        string url = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
        var factory = app.Services.GetServices<IConnectionListenerFactory>().OfType<ProactorTransportFactory>().Single();

        // Act: several rounds, so that leaked buffers would exhaust the 64-buffer rings.
        for (int round = 0; round < 5; round++)
        {
            using var keepAlive = new HttpClient { Timeout = TestTimeouts.Default };
            var requests = new List<Task>();
            for (int i = 0; i < 20; i++)
            {
                requests.Add(keepAlive.GetStringAsync(url + "/json"));
                byte[] body = new byte[100_000 + i];
                requests.Add(keepAlive.PostAsync(url + "/sink", new ByteArrayContent(body)).ContinueWith(t => t.Result.EnsureSuccessStatusCode()));
            }

            using var churn = new HttpClient { Timeout = TestTimeouts.Default };
            churn.DefaultRequestHeaders.ConnectionClose = true;
            for (int i = 0; i < 20; i++)
            {
                requests.Add(churn.GetStringAsync(url + "/json"));
            }

            await Task.WhenAll(requests).LongTimeout();
        }

        // Assert: once the clients are gone, the connections close and every buffer is back.
        await WaitForAsync(() => factory.Backend!.Dispatchers.Sum(d => d.ReceiveBuffersLent) == 0 &&
                                 factory.Backend.Dispatchers.Sum(d => d.ConnectionCount) == 1 /* the listener */);
        Assert.Equal(0, factory.Backend!.Dispatchers.Sum(d => d.ReceiveBuffersLent));
        Assert.All(factory.Backend.Dispatchers, d => Assert.Equal(0, d.HandlerFaults));
    }

    private static async Task WaitForAsync(Func<bool> condition)
    {
        var deadline = DateTime.UtcNow + TestTimeouts.Default;
        while (!condition() && DateTime.UtcNow < deadline)
        {
            await Task.Delay(50);
        }
    }
}
