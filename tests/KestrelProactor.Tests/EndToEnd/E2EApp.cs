using System.Buffers;
using System.Net.WebSockets;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.DependencyInjection;

namespace KestrelProactor.Tests.EndToEnd;

/// <summary>Request body checksum as the server saw it.</summary>
public sealed record BodyReport(long Length, string Sha256, bool Chunked, long? ContentLength);

public sealed record Greeting(string Name, int Count);

/// <summary>
/// The app every end-to-end test talks to. Each response carries <see cref="TransportHeader"/>, naming the transport
/// that accepted the connection, so a test for the proactor cannot pass on a silent fallback to sockets.
/// </summary>
internal static class E2EApp
{
    public const string TransportHeader = "X-Transport";
    public const string SocketsTransport = "sockets";

    public static string ProactorTransport(string backend) => "proactor/" + backend;

    public static void Configure(IApplicationBuilder app)
    {
        app.Use(static (context, next) =>
        {
            var proactor = context.Features.Get<IProactorConnectionFeature>();
            context.Response.Headers[TransportHeader] = proactor is null ? SocketsTransport : ProactorTransport(proactor.Backend);
            return next(context);
        });
        app.UseWebSockets();
        app.UseRouting();
        app.UseEndpoints(MapEndpoints);
    }

    private static void MapEndpoints(IEndpointRouteBuilder endpoints)
    {
        endpoints.MapGet("/hello", () => "Hello from KestrelProactor");

        endpoints.MapPost("/greet", (Greeting greeting) => new Greeting($"Hello, {greeting.Name}", greeting.Count + 1));

        endpoints.MapPost("/echo", static async (HttpContext context) =>
        {
            context.Response.ContentType = "application/octet-stream";
            await context.Request.Body.CopyToAsync(context.Response.Body, context.RequestAborted);
        });

        // Reads the whole body before answering. Many concurrent streaming echoes on one HTTP/2 connection can
        // deadlock on flow control by design (each side waits for the other to read), whatever the transport.
        endpoints.MapPost("/echo-buffered", static async (HttpContext context) =>
        {
            using var body = new MemoryStream();
            await context.Request.Body.CopyToAsync(body, context.RequestAborted);
            context.Response.ContentType = "application/octet-stream";
            await context.Response.Body.WriteAsync(body.GetBuffer().AsMemory(0, (int)body.Length), context.RequestAborted);
        });

        // Takes HttpRequest, not HttpContext: a lambda over HttpContext alone would bind as a RequestDelegate
        // and its result would be dropped instead of written as JSON.
        endpoints.MapPost("/sha256", static (HttpRequest request) => ReportBodyAsync(request));

        endpoints.MapGet("/download", DownloadAsync);

        endpoints.MapGet("/chunked", static async (HttpContext context) =>
        {
            // No Content-Length and several flushes: HTTP/1.1 frames this as chunked.
            context.Response.ContentType = "text/plain";
            for (int i = 0; i < 5; i++)
            {
                await context.Response.WriteAsync($"part {i};", context.RequestAborted);
                await context.Response.Body.FlushAsync(context.RequestAborted);
            }
        });

        endpoints.MapPost("/hold", static async (HttpContext context, E2EAppState state) =>
        {
            state.HeldRequestArrived.TrySetResult();
            await state.ReleaseHeldRequest.Task.WaitAsync(context.RequestAborted);
            return await ReportBodyAsync(context.Request);
        });

        endpoints.MapGet("/gate/{id:int}", static async (int id, E2EAppState state, HttpContext context) =>
        {
            state.ArriveAtGate();
            try
            {
                await state.GateOpen.Task.WaitAsync(TimeSpan.FromSeconds(30), context.RequestAborted);
            }
            catch (TimeoutException)
            {
                return Results.StatusCode(StatusCodes.Status503ServiceUnavailable);
            }

            return Results.Text(id.ToString(System.Globalization.CultureInfo.InvariantCulture));
        });

        endpoints.Map("/ws", EchoWebSocketAsync);
    }

    private static async Task<BodyReport> ReportBodyAsync(HttpRequest request)
    {
        bool chunked = request.Headers.TransferEncoding.ToString().Contains("chunked", StringComparison.OrdinalIgnoreCase);
        var (length, sha) = await PatternData.HashStreamAsync(request.Body, request.HttpContext.RequestAborted);
        return new BodyReport(length, sha, chunked, request.ContentLength);
    }

    /// <summary>
    /// GET /download?size=N&amp;seed=S[&amp;chunked=true]: pattern bytes, flushed in 64 KiB writes; every flush that
    /// returns is counted in <see cref="E2EAppState.ResponseBytesFlushed"/>, which is how a test sees back-pressure.
    /// </summary>
    private static async Task DownloadAsync(HttpContext context, E2EAppState state, long size, int seed, bool? chunked)
    {
        var response = context.Response;
        response.ContentType = "application/octet-stream";
        if (chunked != true)
        {
            response.ContentLength = size;
        }

        const int WriteSize = 64 * 1024;
        var writer = response.BodyWriter;
        for (long offset = 0; offset < size;)
        {
            int count = (int)Math.Min(WriteSize, size - offset);
            PatternData.Fill(writer.GetSpan(count)[..count], offset, seed);
            writer.Advance(count);
            var result = await writer.FlushAsync(context.RequestAborted);
            if (result.IsCanceled || result.IsCompleted)
            {
                // The client went away; nothing more to send.
                return;
            }

            offset += count;
            state.AddResponseBytesFlushed(count);
        }
    }

    private static async Task EchoWebSocketAsync(HttpContext context)
    {
        if (!context.WebSockets.IsWebSocketRequest)
        {
            context.Response.StatusCode = StatusCodes.Status400BadRequest;
            return;
        }

        using var socket = await context.WebSockets.AcceptWebSocketAsync();
        var message = new ArrayBufferWriter<byte>();
        while (true)
        {
            ValueWebSocketReceiveResult result = await socket.ReceiveAsync(message.GetMemory(64 * 1024), context.RequestAborted);
            if (result.MessageType == WebSocketMessageType.Close)
            {
                await socket.CloseOutputAsync(WebSocketCloseStatus.NormalClosure, "bye", context.RequestAborted);
                return;
            }

            message.Advance(result.Count);
            if (result.EndOfMessage)
            {
                await socket.SendAsync(message.WrittenMemory, result.MessageType, endOfMessage: true, context.RequestAborted);
                message.ResetWrittenCount();
            }
        }
    }

    internal static void AddServices(IServiceCollection services, E2EAppState state)
    {
        services.AddSingleton(state);
        services.AddRouting();
    }
}
