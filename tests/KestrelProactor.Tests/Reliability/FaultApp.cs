using System.Buffers;
using System.Net.WebSockets;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;

namespace KestrelProactor.Tests.Reliability;

/// <summary>
/// Endpoints that stay inside a request while a client misbehaves, and record what they saw when it ended
/// (<see cref="FaultAppState.Record"/>): whether <c>RequestAborted</c> fired and which exception ended them.
/// </summary>
internal static class FaultApp
{
    /// <summary>
    /// Kestrel fires <c>RequestAborted</c> from the thread pool, so it may trail the exception that ended a
    /// read or write: a handler that wants to report it waits a little for it.
    /// </summary>
    private static async Task<bool> AbortedWithinAsync(CancellationToken requestAborted)
    {
        for (int i = 0; i < 250 && !requestAborted.IsCancellationRequested; i++)
        {
            await Task.Delay(20);
        }

        return requestAborted.IsCancellationRequested;
    }

    public static void Map(WebApplication app)
    {
        app.UseWebSockets();

        app.MapGet("/hello", () => "hello");

        app.MapPost("/echo", static async (HttpContext context) =>
        {
            context.Response.ContentType = "application/octet-stream";
            await context.Request.Body.CopyToAsync(context.Response.Body, context.RequestAborted);
        });

        // Reads the body to its end, counting bytes.
        app.MapPost("/upload", static async (HttpContext context, FaultAppState state) =>
        {
            long read = 0;
            var buffer = new byte[16 * 1024];
            try
            {
                int n;
                while ((n = await context.Request.Body.ReadAsync(buffer, context.RequestAborted)) > 0)
                {
                    if (read == 0)
                    {
                        state.OnUploadEntered();
                    }

                    read += n;
                    state.Entered.TrySetResult();
                }

                state.Record(new AppOutcome("upload", await AbortedWithinAsync(context.RequestAborted), null, read));
                return Results.Text(read.ToString(System.Globalization.CultureInfo.InvariantCulture));
            }
            catch (Exception ex)
            {
                state.Record(new AppOutcome("upload", await AbortedWithinAsync(context.RequestAborted), ex.GetType().Name, read));
                throw;
            }
        });

        // GET /big?size=N: N bytes in 64 KiB flushes.
        app.MapGet("/big", static async (HttpContext context, FaultAppState state, long size) =>
        {
            long written = 0;
            try
            {
                context.Response.ContentLength = size;
                while (written < size)
                {
                    int count = (int)Math.Min(64 * 1024, size - written);
                    context.Response.BodyWriter.GetSpan(count)[..count].Fill((byte)'x');
                    context.Response.BodyWriter.Advance(count);
                    var result = await context.Response.BodyWriter.FlushAsync(context.RequestAborted);
                    written += count;
                    state.Entered.TrySetResult();
                    if (result.IsCanceled || result.IsCompleted)
                    {
                        break;
                    }
                }

                state.Record(new AppOutcome("big", await AbortedWithinAsync(context.RequestAborted), null, written));
            }
            catch (Exception ex)
            {
                state.Record(new AppOutcome("big", await AbortedWithinAsync(context.RequestAborted), ex.GetType().Name, written));
                throw;
            }
        });

        // Waits for the client to go away (at most 15 s).
        app.MapGet("/wait-abort", static async (HttpContext context, FaultAppState state) =>
        {
            state.Entered.TrySetResult();
            try
            {
                await Task.Delay(TimeSpan.FromSeconds(15), context.RequestAborted);
                state.Record(new AppOutcome("wait-abort", await AbortedWithinAsync(context.RequestAborted), null, 0));
            }
            catch (Exception ex)
            {
                state.Record(new AppOutcome("wait-abort", await AbortedWithinAsync(context.RequestAborted), ex.GetType().Name, 0));
                throw;
            }
        });

        // Graceful shutdown: a request the server must finish although it is stopping.
        app.MapGet("/slow", static async (FaultAppState state, int ms) =>
        {
            state.OnSlowEntered();
            await Task.Delay(ms);
            state.OnSlowCompleted();
            return "slow";
        });

        app.Map("/ws", static async (HttpContext context, FaultAppState state) =>
        {
            if (!context.WebSockets.IsWebSocketRequest)
            {
                return Results.BadRequest();
            }

            using WebSocket socket = await context.WebSockets.AcceptWebSocketAsync();
            long received = 0;
            var message = new ArrayBufferWriter<byte>();
            try
            {
                while (true)
                {
                    ValueWebSocketReceiveResult result = await socket.ReceiveAsync(message.GetMemory(16 * 1024), context.RequestAborted);
                    if (result.MessageType == WebSocketMessageType.Close)
                    {
                        await socket.CloseOutputAsync(WebSocketCloseStatus.NormalClosure, "bye", context.RequestAborted);
                        state.Record(new AppOutcome("ws", await AbortedWithinAsync(context.RequestAborted), null, received));
                        return Results.Empty;
                    }

                    received += result.Count;
                    state.Entered.TrySetResult();
                    message.Advance(result.Count);
                    if (result.EndOfMessage)
                    {
                        await socket.SendAsync(message.WrittenMemory, result.MessageType, endOfMessage: true, context.RequestAborted);
                        message.ResetWrittenCount();
                    }
                }
            }
            catch (Exception ex)
            {
                state.Record(new AppOutcome("ws", await AbortedWithinAsync(context.RequestAborted), ex.GetType().Name, received));
                return Results.Empty;
            }
        });
    }
}
