using System.IO.Pipelines;
using System.Net.Sockets;
using System.Security.Cryptography;
using KestrelProactor.Tests.Infrastructure;
using Microsoft.AspNetCore.Connections;

namespace KestrelProactor.Tests.Contract;

/// <summary>
/// Contract: <c>MaxReadBufferSize</c> bounds what the transport buffers for an application that does not read
/// (Kestrel's <c>MaxRequestBufferSize</c> relies on it), <c>MaxWriteBufferSize</c> pauses an application that writes
/// faster than the peer reads, and pausing loses nothing.
/// </summary>
public sealed class BackPressureTests
{
    private const long MaxReadBufferSize = 64 * 1024;
    private const long MaxWriteBufferSize = 64 * 1024;
    // Not scaled for Wine: less than 16 MiB fits in loopback's autotuned socket buffers and never stalls.
    private const int UploadSize = 16 * 1024 * 1024;

    [Theory]
    [MemberData(nameof(TransportMatrix.All), MemberType = typeof(TransportMatrix))]
    public async Task Input_ServerNotReading_ClientSendStallsThenAllBytesArrive(TransportKind kind, TransportEndpoint endpoint)
    {
        // Arrange
        await using ListenerHarness harness = await ListenerHarness.BindAsync(kind, endpoint, configure: o => o.MaxReadBufferSize = MaxReadBufferSize);
        (Socket client, ConnectionContext connection) = await harness.ConnectAndAcceptAsync();
        byte[] upload = RawClient.CreatePayload(UploadSize);

        // Act: with the server not reading, 16 MiB cannot fit in the pipe (64 KiB) plus the kernel's buffers.
        Task send = Task.Run(async () =>
        {
            await RawClient.SendAllAsync(client, upload);
            client.Shutdown(SocketShutdown.Send);
        }, TestContext.Current.CancellationToken);
        Task first = await Task.WhenAny(send, Task.Delay(TimeSpan.FromSeconds(2), TestContext.Current.CancellationToken));

        // Assert
        Assert.NotSame(send, first);
        ReadResult buffered = await connection.Transport.Input.ReadAsync(TestContext.Current.CancellationToken).DefaultTimeout();
        long bufferedLength = buffered.Buffer.Length;
        connection.Transport.Input.AdvanceTo(buffered.Buffer.Start, buffered.Buffer.End);

        // The pause point is MaxReadBufferSize; one more receive may land before the transport notices.
        TestContext.Current.TestOutputHelper?.WriteLine($"Buffered while paused: {bufferedLength} bytes.");
        Assert.InRange(bufferedLength, 1, 2 * MaxReadBufferSize);

        (long total, string hash) = await HashToEndAsync(connection.Transport.Input).LongTimeout();
        await send.LongTimeout();
        Assert.Equal(UploadSize, total);
        Assert.Equal(RawClient.Hash(upload), hash);
    }

    [Theory]
    [MemberData(nameof(TransportMatrix.All), MemberType = typeof(TransportMatrix))]
    public async Task Output_ClientNotReading_FlushStallsThenAllBytesArrive(TransportKind kind, TransportEndpoint endpoint)
    {
        // Arrange
        const int ChunkSize = 16 * 1024;
        const long GiveUpAfter = 64L * 1024 * 1024;
        await using ListenerHarness harness = await ListenerHarness.BindAsync(kind, endpoint, configure: o => o.MaxWriteBufferSize = MaxWriteBufferSize);
        (Socket client, ConnectionContext connection) = await harness.ConnectAndAcceptAsync();
        using var sentHash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        long written = 0;
        Task<FlushResult>? stalledFlush = null;

        // Act: write until a flush stays pending; only the socket buffers and MaxWriteBufferSize can absorb data.
        for (int chunk = 0; written < GiveUpAfter; chunk++)
        {
            byte[] data = RawClient.CreatePayload(ChunkSize, seed: chunk);
            sentHash.AppendData(data);
            written += data.Length;
            Task<FlushResult> flush = connection.Transport.Output.WriteAsync(data, TestContext.Current.CancellationToken).AsTask();
            if (await Task.WhenAny(flush, Task.Delay(TimeSpan.FromSeconds(1), TestContext.Current.CancellationToken)) != flush)
            {
                stalledFlush = flush;
                break;
            }
        }

        // Assert
        Assert.NotNull(stalledFlush);
        Task<(long Total, string Hash)> receive = HashToEndAsync(client);
        await stalledFlush.DefaultTimeout();
        await connection.Transport.Output.CompleteAsync().DefaultTimeout();
        (long total, string hash) = await receive.LongTimeout();
        Assert.Equal(written, total);
        Assert.Equal(Convert.ToHexString(sentHash.GetHashAndReset()), hash);
    }

    private static async Task<(long Total, string Hash)> HashToEndAsync(PipeReader input)
    {
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        long total = 0;
        while (true)
        {
            ReadResult result = await input.ReadAsync().DefaultTimeout();
            foreach (ReadOnlyMemory<byte> segment in result.Buffer)
            {
                hash.AppendData(segment.Span);
                total += segment.Length;
            }

            input.AdvanceTo(result.Buffer.End);
            if (result.IsCompleted)
            {
                return (total, Convert.ToHexString(hash.GetHashAndReset()));
            }
        }
    }

    private static async Task<(long Total, string Hash)> HashToEndAsync(Socket client)
    {
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        var buffer = new byte[64 * 1024];
        long total = 0;
        while (true)
        {
            int read = await client.ReceiveAsync(buffer, SocketFlags.None).DefaultTimeout();
            if (read == 0)
            {
                return (total, Convert.ToHexString(hash.GetHashAndReset()));
            }

            hash.AppendData(buffer, 0, read);
            total += read;
        }
    }
}
