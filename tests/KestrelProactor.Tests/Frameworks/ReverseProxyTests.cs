using System.Net;
using System.Net.WebSockets;
using System.Security.Cryptography;
using KestrelProactor.Tests.EndToEnd;
using KestrelProactor.Tests.Infrastructure;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;
using Yarp.ReverseProxy.Configuration;

namespace KestrelProactor.Tests.Frameworks;

/// <summary>
/// A reverse proxy (YARP) on the transport under test, in front of a backend on the socket transport: concurrent
/// requests, a large body streamed both ways, a WebSocket upgraded through it, and a backend that fails midway.
/// </summary>
public sealed class ReverseProxyTests
{
    [Theory]
    [MemberData(nameof(TransportMatrix.All), MemberType = typeof(TransportMatrix))]
    public async Task Proxy_ForwardsRequestsBodiesWebSocketsAndFailures(TransportKind kind, TransportEndpoint endpoint)
    {
        await using FrameworkHost backend = await FrameworkHost.StartAsync(
            TransportKind.Sockets,
            TransportEndpoint.Tcp,
            HttpProtocols.Http1,
            static services => { },
            ConfigureBackend);
        await using FrameworkHost proxy = await FrameworkHost.StartAsync(
            kind,
            endpoint,
            HttpProtocols.Http1,
            services => services.AddReverseProxy().LoadFromMemory(
                [new RouteConfig { RouteId = "all", ClusterId = "backend", Match = new RouteMatch { Path = "{**rest}" } }],
                [new ClusterConfig
                {
                    ClusterId = "backend",
                    Destinations = new Dictionary<string, DestinationConfig> { ["one"] = new() { Address = backend.BaseAddress.ToString() } },
                }]),
            static app => app.MapReverseProxy());
        using var client = new HttpClient(proxy.CreateHandler()) { BaseAddress = proxy.BaseAddress, Timeout = Timeout.InfiniteTimeSpan };

        // Concurrent requests, each answered by the backend.
        string[] answers = await Task.WhenAll(Enumerable.Range(0, 32).Select(i => client.GetStringAsync($"/hello/{i}"))).LongTimeout();
        for (int i = 0; i < answers.Length; i++)
        {
            Assert.Equal($"hello {i}", answers[i]);
        }

        // 8 MiB up, digested by the backend, and 8 MiB down. Not one echo of 8 MiB: the proxy's client to the backend
        // sends a request's whole body before it reads the response, so an echo larger than the sockets' buffers
        // between them can stall, whatever the transport under test.
        byte[] body = PatternData.Create(8 * 1024 * 1024, seed: 3);
        using (HttpResponseMessage digested = await client.PostAsync("/digest", new ByteArrayContent(body)).LongTimeout())
        {
            Assert.Equal(HttpStatusCode.OK, digested.StatusCode);
            Assert.Equal($"{body.Length} {Convert.ToHexString(SHA256.HashData(body))}", await digested.Content.ReadAsStringAsync().LongTimeout());
        }

        byte[] download = await client.GetByteArrayAsync($"/bytes/{body.Length}").LongTimeout();
        Assert.Equal(body.Length, download.Length);
        Assert.True(download.AsSpan().SequenceEqual(body), "The download through the proxy differs from the pattern.");

        // A WebSocket upgraded through the proxy: messages both ways, then a clean close.
        using (WebSocket socket = await proxy.ConnectWebSocketAsync(new UriBuilder(proxy.BaseAddress) { Scheme = "ws", Path = "/ws" }.Uri, CancellationToken.None).LongTimeout())
        {
            foreach (int size in (int[])[1, 125, 126, 70_000])
            {
                byte[] message = PatternData.Create(size, seed: size);
                await socket.SendAsync(message, WebSocketMessageType.Binary, endOfMessage: true, CancellationToken.None).LongTimeout();
                Assert.Equal(message, await ReceiveMessageAsync(socket).LongTimeout());
            }

            await socket.CloseAsync(WebSocketCloseStatus.NormalClosure, "done", CancellationToken.None).LongTimeout();
            Assert.Equal(WebSocketCloseStatus.NormalClosure, socket.CloseStatus);
        }

        // The backend fails after the response started: the client's read of the body fails instead of ending cleanly.
        using (HttpResponseMessage failing = await client.GetAsync("/fail-midway", HttpCompletionOption.ResponseHeadersRead).LongTimeout())
        {
            Assert.Equal(HttpStatusCode.OK, failing.StatusCode);
            await Assert.ThrowsAnyAsync<Exception>(() => failing.Content.ReadAsByteArrayAsync().LongTimeout());
        }

        // The proxy's connections serve on.
        Assert.Equal("hello after", await client.GetStringAsync("/hello/after").LongTimeout());
    }

    private static void ConfigureBackend(WebApplication app)
    {
        app.UseWebSockets();
        app.MapGet("/hello/{name}", static (string name) => $"hello {name}");
        app.MapPost("/digest", static async context =>
        {
            using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
            byte[] buffer = new byte[64 * 1024];
            long length = 0;
            int read;
            while ((read = await context.Request.Body.ReadAsync(buffer, context.RequestAborted)) > 0)
            {
                hash.AppendData(buffer, 0, read);
                length += read;
            }

            await context.Response.WriteAsync($"{length} {Convert.ToHexString(hash.GetHashAndReset())}", context.RequestAborted);
        });
        app.MapGet("/bytes/{length:int}", static async (HttpContext context, int length) =>
        {
            context.Response.ContentType = "application/octet-stream";
            context.Response.ContentLength = length;
            byte[] data = PatternData.Create(length, seed: 3);
            for (int offset = 0; offset < length; offset += 100_000)
            {
                await context.Response.Body.WriteAsync(data.AsMemory(offset, Math.Min(100_000, length - offset)), context.RequestAborted);
            }
        });
        app.MapGet("/fail-midway", static async context =>
        {
            await context.Response.Body.WriteAsync(new byte[64 * 1024], context.RequestAborted);
            await context.Response.Body.FlushAsync(context.RequestAborted);
            context.Abort();
        });
        app.Map("/ws", static async context =>
        {
            if (!context.WebSockets.IsWebSocketRequest)
            {
                context.Response.StatusCode = StatusCodes.Status400BadRequest;
                return;
            }

            using WebSocket socket = await context.WebSockets.AcceptWebSocketAsync();
            var buffer = new byte[128 * 1024];
            while (true)
            {
                int length = 0;
                ValueWebSocketReceiveResult result;
                do
                {
                    result = await socket.ReceiveAsync(buffer.AsMemory(length), context.RequestAborted);
                    length += result.Count;
                }
                while (!result.EndOfMessage);

                if (result.MessageType == WebSocketMessageType.Close)
                {
                    await socket.CloseAsync(WebSocketCloseStatus.NormalClosure, "bye", context.RequestAborted);
                    return;
                }

                await socket.SendAsync(buffer.AsMemory(0, length), result.MessageType, endOfMessage: true, context.RequestAborted);
            }
        });
    }

    private static async Task<byte[]> ReceiveMessageAsync(WebSocket socket)
    {
        using var message = new MemoryStream();
        var buffer = new byte[32 * 1024];
        while (true)
        {
            ValueWebSocketReceiveResult result = await socket.ReceiveAsync(buffer.AsMemory(), CancellationToken.None);
            Assert.Equal(WebSocketMessageType.Binary, result.MessageType);
            message.Write(buffer, 0, result.Count);
            if (result.EndOfMessage)
            {
                return message.ToArray();
            }
        }
    }
}
