using System.Buffers;
using System.Net.WebSockets;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;

namespace KestrelProactor.Perf;

/// <summary>
/// The endpoints every scenario hits. They do the same work on either transport; the fault modes exist only so the
/// driver's checks can be shown to fail (run.sh --self-test).
/// </summary>
internal static class BenchmarkEndpoints
{
    private static readonly byte[] s_plaintextBody = "Hello, World!"u8.ToArray();
    private static long s_plaintextRequests;

    public static void Map(WebApplication app, string fault)
    {
        app.MapGet("/plaintext", (HttpContext context) => Plaintext(context, fault));
        app.MapGet("/json", Json);
        app.MapPost("/echo", Echo);
        app.MapGet("/bytes/{n:long}", (HttpContext context, long n) => Bytes(context, n, fault == "corrupt-bytes"));
        app.MapPost("/hash", Hash);
        app.MapPost("/verify", (HttpContext context) => Verify(context, fault == "corrupt-bytes"));
        app.MapGet("/wait", Wait);
        app.Map("/ws", WebSocketEcho);
        app.MapGet("/transport", Transport);
    }

    private static Task Plaintext(HttpContext context, string fault)
    {
        long served = Interlocked.Increment(ref s_plaintextRequests);
        if (fault == "crash" && served == 2000)
        {
            Environment.FailFast("--fault crash: the benchmark server dies on purpose after 2000 plaintext requests");
        }

        var response = context.Response;
        response.StatusCode = fault == "status500" && served % 10 == 0 ? 500 : 200;
        response.ContentType = "text/plain";
        response.ContentLength = s_plaintextBody.Length;
        return response.Body.WriteAsync(s_plaintextBody).AsTask();
    }

    private static Task Json(HttpContext context)
    {
        var response = context.Response;
        response.ContentType = "application/json";
        return JsonSerializer.SerializeAsync(response.Body, new JsonMessage("Hello, World!"), BenchmarkJsonContext.Default.JsonMessage);
    }

    private static async Task Echo(HttpContext context)
    {
        context.Response.ContentType = "application/octet-stream";
        if (context.Request.ContentLength is long length)
        {
            context.Response.ContentLength = length;
        }

        await context.Request.Body.CopyToAsync(context.Response.Body);
    }

    private static async Task Bytes(HttpContext context, long n, bool corrupt)
    {
        if (n < 0)
        {
            context.Response.StatusCode = 400;
            return;
        }

        var response = context.Response;
        response.ContentType = "application/octet-stream";
        response.ContentLength = n;
        var writer = response.BodyWriter;
        byte[] block = DownloadPattern.Block;
        long position = 0;
        bool corrupted = false;
        int emptyInARow = 0;
        while (position < n)
        {
            var memory = writer.GetMemory();
            if (memory.IsEmpty)
            {
                // PipeWriter promises a non-empty buffer, but the proactor factory's socket fallback has been seen to
                // lend none before the response starts; flushing starts it. Twice in a row would spin forever: fail instead.
                if (++emptyInARow > 1)
                {
                    throw new InvalidOperationException("The response PipeWriter lent an empty buffer twice in a row.");
                }

                await writer.FlushAsync(context.RequestAborted);
                continue;
            }

            emptyInARow = 0;
            // The pattern repeats every block, so absolute offset p is block[p % block.Length] whatever the pipe lends.
            int start = (int)(position % block.Length);
            int chunk = (int)Math.Min(Math.Min(n - position, memory.Length), block.Length - start);
            block.AsSpan(start, chunk).CopyTo(memory.Span);
            if (corrupt && !corrupted)
            {
                memory.Span[chunk / 2] ^= 0xFF;
                corrupted = true;
            }

            writer.Advance(chunk);
            position += chunk;
            var flush = await writer.FlushAsync(context.RequestAborted);
            if (flush.IsCanceled || flush.IsCompleted)
            {
                return;
            }
        }
    }

    private static async Task Hash(HttpContext context)
    {
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        var reader = context.Request.BodyReader;
        long total = 0;
        while (true)
        {
            var result = await reader.ReadAsync(context.RequestAborted);
            foreach (var segment in result.Buffer)
            {
                sha.AppendData(segment.Span);
                total += segment.Length;
            }

            reader.AdvanceTo(result.Buffer.End);
            if (result.IsCompleted)
            {
                break;
            }
        }

        byte[] answer = Encoding.ASCII.GetBytes($"{Convert.ToHexStringLower(sha.GetHashAndReset())} {total}\n");
        context.Response.ContentType = "text/plain";
        context.Response.ContentLength = answer.Length;
        await context.Response.Body.WriteAsync(answer, context.RequestAborted);
    }

    /// <summary>
    /// The upload sink: compares the body with <see cref="DownloadPattern"/> as it arrives (memcmp speed, so the
    /// transfer is not bounded by hashing) and answers "match N" or "mismatch at OFFSET N".
    /// </summary>
    private static async Task Verify(HttpContext context, bool corrupt)
    {
        byte[] block = DownloadPattern.Block;
        var reader = context.Request.BodyReader;
        long total = 0;
        long firstMismatch = -1;
        while (true)
        {
            var result = await reader.ReadAsync(context.RequestAborted);
            foreach (var segment in result.Buffer)
            {
                var data = segment.Span;
                if (corrupt && total == 0 && !data.IsEmpty)
                {
                    // --fault corrupt-bytes: act as if the transport had flipped the first byte it received.
                    byte[] copy = data.ToArray();
                    copy[0] ^= 0xFF;
                    data = copy;
                }

                while (!data.IsEmpty)
                {
                    int start = (int)(total % block.Length);
                    int length = Math.Min(data.Length, block.Length - start);
                    if (firstMismatch < 0 && !data[..length].SequenceEqual(block.AsSpan(start, length)))
                    {
                        firstMismatch = total + data[..length].CommonPrefixLength(block.AsSpan(start, length));
                    }

                    data = data[length..];
                    total += length;
                }
            }

            reader.AdvanceTo(result.Buffer.End);
            if (result.IsCompleted)
            {
                break;
            }
        }

        byte[] answer = Encoding.ASCII.GetBytes(firstMismatch < 0 ? $"match {total}\n" : $"mismatch at {firstMismatch} {total}\n");
        context.Response.ContentType = "text/plain";
        context.Response.ContentLength = answer.Length;
        await context.Response.Body.WriteAsync(answer, context.RequestAborted);
    }

    private static async Task Wait(HttpContext context)
    {
        await Task.Delay(Random.Shared.Next(0, 6), context.RequestAborted);
        context.Response.ContentType = "text/plain";
        context.Response.ContentLength = s_plaintextBody.Length;
        await context.Response.Body.WriteAsync(s_plaintextBody);
    }

    private static async Task WebSocketEcho(HttpContext context)
    {
        if (!context.WebSockets.IsWebSocketRequest)
        {
            context.Response.StatusCode = 400;
            return;
        }

        using var socket = await context.WebSockets.AcceptWebSocketAsync();
        byte[] buffer = ArrayPool<byte>.Shared.Rent(64 * 1024);
        try
        {
            while (true)
            {
                var received = await socket.ReceiveAsync(buffer.AsMemory(), context.RequestAborted);
                if (received.MessageType == WebSocketMessageType.Close)
                {
                    await socket.CloseOutputAsync(WebSocketCloseStatus.NormalClosure, null, context.RequestAborted);
                    return;
                }

                await socket.SendAsync(buffer.AsMemory(0, received.Count), received.MessageType, received.EndOfMessage, context.RequestAborted);
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    private static Task Transport(HttpContext context)
    {
        // Which transport served *this* connection: the proactor attaches its feature, the socket transport does not.
        var feature = context.Features.Get<IProactorConnectionFeature>();
        context.Response.ContentType = "text/plain";
        return context.Response.WriteAsync(feature is null ? "sockets\n" : $"{feature.Backend} dispatcher={feature.DispatcherId}\n");
    }
}

internal sealed record JsonMessage(string Message);

[JsonSerializable(typeof(JsonMessage))]
[JsonSourceGenerationOptions(PropertyNamingPolicy = JsonKnownNamingPolicy.CamelCase)]
internal sealed partial class BenchmarkJsonContext : JsonSerializerContext;
