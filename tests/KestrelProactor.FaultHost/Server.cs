using System.Globalization;
using System.Net;
using System.Net.WebSockets;
using Microsoft.AspNetCore.Server.Kestrel.Core;

namespace KestrelProactor.FaultHost;

/// <summary>The application under the faults: endpoints that send and check <see cref="Pattern"/> bytes.</summary>
internal static class Server
{
    /// <summary>With FAULTHOST_TRACE_H2=1: HTTP/2 connections and how far Kestrel got with each.</summary>
    public static readonly System.Collections.Concurrent.ConcurrentDictionary<string, string> LiveConnections = new();

    public static WebApplication Build(int dispatchers, Action<ProactorTransportOptions> configure, ServerCounters counters)
    {
        var builder = WebApplication.CreateSlimBuilder(Array.Empty<string>());
        builder.Logging.ClearProviders();
        builder.WebHost.UseKestrel(k =>
        {
            k.Limits.MaxRequestBodySize = null;
            k.Listen(IPAddress.Loopback, 0, o => o.Protocols = HttpProtocols.Http1);
            k.Listen(IPAddress.Loopback, 0, o =>
            {
                o.Protocols = HttpProtocols.Http2;
                if (Environment.GetEnvironmentVariable("FAULTHOST_TRACE_H2") == "1")
                {
                    o.Use(next => async connection =>
                    {
                        string id = connection.ConnectionId + " " + connection.RemoteEndPoint;
                        LiveConnections[id] = "processing";
                        try
                        {
                            await next(connection);
                            LiveConnections[id] = "processed";
                        }
                        catch (Exception ex)
                        {
                            LiveConnections[id] = "threw " + ex.GetType().Name;
                        }
                    });
                }
            });
        });
        builder.WebHost.UseProactorTransport(o =>
        {
            o.AllowSocketTransportFallback = false;
            o.DispatcherCount = dispatchers;
            configure(o);
        });

        var app = builder.Build();
        app.UseWebSockets();
        app.MapGet("/bytes", static async (HttpContext context, long size, long key) =>
        {
            context.Response.ContentLength = size;
            await WritePatternAsync(context, key, size, context.RequestAborted);
        });
        app.MapGet("/abort", static async (HttpContext context, long size, long key) =>
        {
            // Declares the whole size, sends half, then aborts: the client must see an error, never a complete body.
            context.Response.ContentLength = size;
            await WritePatternAsync(context, key, size / 2, context.RequestAborted);
            await context.Response.Body.FlushAsync(context.RequestAborted);
            context.Abort();
        });
        app.MapPost("/echo", static async (HttpContext context) =>
        {
            var body = new MemoryStream();
            await context.Request.Body.CopyToAsync(body, context.RequestAborted);
            context.Response.ContentLength = body.Length;
            context.Response.ContentType = "application/octet-stream";
            await context.Response.Body.WriteAsync(body.GetBuffer().AsMemory(0, (int)body.Length), context.RequestAborted);
        });
        app.MapPost("/upload", async (HttpContext context, long key) =>
        {
            var buffer = new byte[16 * 1024];
            long offset = 0;
            int n;
            while ((n = await context.Request.Body.ReadAsync(buffer, context.RequestAborted)) > 0)
            {
                long bad = Pattern.FirstMismatch(key, offset, buffer.AsSpan(0, n));
                if (bad >= 0)
                {
                    counters.WrongBytes($"upload key={key}: wrong byte at {bad}");
                    return Results.Text("bad " + bad.ToString(CultureInfo.InvariantCulture));
                }

                offset += n;
            }

            return Results.Text("ok " + offset.ToString(CultureInfo.InvariantCulture));
        });
        app.Map("/ws", static async (HttpContext context) =>
        {
            if (!context.WebSockets.IsWebSocketRequest)
            {
                context.Response.StatusCode = 400;
                return;
            }

            using WebSocket socket = await context.WebSockets.AcceptWebSocketAsync();
            var buffer = new byte[256 * 1024];
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
                    await socket.CloseOutputAsync(WebSocketCloseStatus.NormalClosure, null, context.RequestAborted);
                    return;
                }

                await socket.SendAsync(buffer.AsMemory(0, length), WebSocketMessageType.Binary, true, context.RequestAborted);
            }
        });
        return app;
    }

    private static async Task WritePatternAsync(HttpContext context, long key, long size, CancellationToken cancellationToken)
    {
        var chunk = new byte[24 * 1024];
        var random = new Random((int)key);
        for (long sent = 0; sent < size;)
        {
            int count = (int)Math.Min(random.Next(1, chunk.Length + 1), size - sent);
            Pattern.Fill(key, sent, chunk.AsSpan(0, count));
            await context.Response.Body.WriteAsync(chunk.AsMemory(0, count), cancellationToken);
            sent += count;
        }
    }
}

/// <summary>What the server saw that no fault excuses.</summary>
internal sealed class ServerCounters
{
    private readonly List<string> _errors = [];

    public void WrongBytes(string what)
    {
        lock (_errors)
        {
            _errors.Add(what);
        }
    }

    public List<string> Errors()
    {
        lock (_errors)
        {
            return [.. _errors];
        }
    }
}
