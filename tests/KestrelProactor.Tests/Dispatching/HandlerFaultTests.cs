using System.Net;
using System.Net.Sockets;
using System.Text;
using KestrelProactor.Dispatching;
using KestrelProactor.Tests.Infrastructure;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;

namespace KestrelProactor.Tests.Dispatching;

/// <summary>A completion handler that throws must cost one connection, never the dispatcher or the process.</summary>
public class HandlerFaultTests
{
    [Fact]
    public async Task ReceiveHandlerThrows_AbortsThatConnection_OthersKeepBeingServed()
    {
        string marker = "X-Fault-" + Guid.NewGuid().ToString("N");
        ProactorDispatcher.TestReceiveHook = data =>
        {
            if (data.IndexOf(Encoding.ASCII.GetBytes(marker)) >= 0)
            {
                throw new InvalidOperationException("injected completion handler fault");
            }
        };

        try
        {
            await using WebApplication app = await StartAsync();
            string url = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
            var endpoint = new Uri(url);
            using var http = new HttpClient { Timeout = TestTimeouts.Default };
            Assert.Equal("io_uring", await http.GetStringAsync(url + "/backend").DefaultTimeout());
            var factory = app.Services.GetServices<IConnectionListenerFactory>().OfType<ProactorTransportFactory>().Single();
            long faultsBefore = factory.Backend!.Dispatchers.Sum(d => d.HandlerFaults);

            // The faulting connection: its request carries the marker.
            using var victim = new Socket(SocketType.Stream, ProtocolType.Tcp);
            await victim.ConnectAsync(new IPEndPoint(IPAddress.Loopback, endpoint.Port)).DefaultTimeout();
            await victim.SendAsync(Encoding.ASCII.GetBytes($"GET /backend HTTP/1.1\r\nHost: x\r\n{marker}: 1\r\n\r\n")).DefaultTimeout();
            int received = await ReceiveUntilClosedAsync(victim);

            Assert.Equal(0, received);
            Assert.Equal(faultsBefore + 1, factory.Backend.Dispatchers.Sum(d => d.HandlerFaults));
            // Every dispatcher still serves: several fresh connections spread over all of them.
            for (int i = 0; i < 8; i++)
            {
                using var fresh = new HttpClient { Timeout = TestTimeouts.Default };
                Assert.Equal("io_uring", await fresh.GetStringAsync(url + "/backend").DefaultTimeout());
            }
        }
        finally
        {
            ProactorDispatcher.TestReceiveHook = null;
        }
    }

    private static async Task<int> ReceiveUntilClosedAsync(Socket socket)
    {
        var buffer = new byte[4096];
        int total = 0;
        try
        {
            while (true)
            {
                int n = await socket.ReceiveAsync(buffer).DefaultTimeout();
                if (n == 0)
                {
                    return total;
                }

                total += n;
            }
        }
        catch (SocketException ex) when (ex.SocketErrorCode == SocketError.ConnectionReset)
        {
            return total;
        }
    }

    private static async Task<WebApplication> StartAsync()
    {
        WebApplicationBuilder builder = WebApplication.CreateSlimBuilder();
        builder.WebHost.UseKestrel(k => k.Listen(IPAddress.Loopback, 0));
        builder.WebHost.UseProactorTransport(o => TransportFactories.Configure(TransportKind.Proactor, o));
        WebApplication app = builder.Build();
        app.MapGet("/backend", (HttpContext c) => c.Features.Get<IProactorConnectionFeature>()?.Backend ?? "sockets");
        await app.StartAsync().DefaultTimeout();
        return app;
    }
}
