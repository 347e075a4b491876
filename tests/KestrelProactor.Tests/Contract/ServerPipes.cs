using System.Buffers;
using System.IO.Pipelines;
using KestrelProactor.Tests.Infrastructure;
using Microsoft.AspNetCore.Connections;

namespace KestrelProactor.Tests.Contract;

/// <summary>What a test's server side does with <see cref="ConnectionContext.Transport"/>.</summary>
internal static class ServerPipes
{
    /// <summary>Copies input to output until the peer's FIN, then completes the output (which sends FIN back).</summary>
    public static async Task EchoAsync(ConnectionContext connection)
    {
        PipeReader input = connection.Transport.Input;
        PipeWriter output = connection.Transport.Output;
        while (true)
        {
            ReadResult result = await input.ReadAsync().DefaultTimeout();
            foreach (ReadOnlyMemory<byte> segment in result.Buffer)
            {
                await output.WriteAsync(segment).DefaultTimeout();
            }

            input.AdvanceTo(result.Buffer.End);
            if (result.IsCompleted)
            {
                break;
            }
        }

        await output.CompleteAsync().DefaultTimeout();
    }

    /// <summary>Reads until the input completes and returns everything read; an input error is rethrown.</summary>
    public static async Task<byte[]> ReadToEndAsync(PipeReader input)
    {
        using var received = new MemoryStream();
        while (true)
        {
            ReadResult result = await input.ReadAsync().DefaultTimeout();
            foreach (ReadOnlyMemory<byte> segment in result.Buffer)
            {
                received.Write(segment.Span);
            }

            input.AdvanceTo(result.Buffer.End);
            if (result.IsCompleted)
            {
                return received.ToArray();
            }
        }
    }

    /// <summary>Reads until at least <paramref name="length"/> bytes arrived and returns exactly those.</summary>
    public static async Task<byte[]> ReadExactlyAsync(PipeReader input, int length)
    {
        while (true)
        {
            ReadResult result = await input.ReadAsync().DefaultTimeout();
            if (result.Buffer.Length >= length)
            {
                byte[] data = result.Buffer.Slice(0, length).ToArray();
                input.AdvanceTo(result.Buffer.GetPosition(length));
                return data;
            }

            Assert.False(result.IsCompleted, $"The input completed after {result.Buffer.Length} of {length} bytes.");
            input.AdvanceTo(result.Buffer.Start, result.Buffer.End);
        }
    }

    /// <summary>A task that completes when <see cref="ConnectionContext.ConnectionClosed"/> fires.</summary>
    public static Task WhenClosedAsync(ConnectionContext connection)
    {
        var closed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        connection.ConnectionClosed.Register(static state => ((TaskCompletionSource)state!).TrySetResult(), closed);
        return closed.Task;
    }
}
