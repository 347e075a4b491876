using System.IO.Pipelines;
using System.Net.Sockets;
using System.Security.Cryptography;
using KestrelProactor.Tests.Infrastructure;
using Microsoft.AspNetCore.Connections;

namespace KestrelProactor.Tests.Contract;

/// <summary>
/// Contract: <c>MaxReadBufferSize</c> bounds what the transport buffers for an application that does not read
/// (Kestrel's <c>MaxRequestBufferSize</c> relies on it), and pausing loses nothing.
/// </summary>
public sealed class BackPressureTests
{
    private const long MaxReadBufferSize = 64 * 1024;
    private const int UploadSize = 16 * 1024 * 1024;

    [Theory]
    [MemberData(nameof(TransportFactories.All), MemberType = typeof(TransportFactories))]
    public async Task Input_ServerNotReading_ClientSendStallsThenAllBytesArrive(TransportKind kind)
    {
        // Arrange
        await using ListenerHarness harness = await ListenerHarness.BindAsync(kind, configure: o => o.MaxReadBufferSize = MaxReadBufferSize);
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
        Assert.InRange(bufferedLength, 1, 2 * MaxReadBufferSize);

        (long total, string hash) = await HashToEndAsync(connection.Transport.Input).LongTimeout();
        await send.LongTimeout();
        Assert.Equal(UploadSize, total);
        Assert.Equal(RawClient.Hash(upload), hash);
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
}
