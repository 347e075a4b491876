using System.Net.Sockets;
using System.Security.Cryptography;
using KestrelProactor.Tests.Infrastructure;

namespace KestrelProactor.Tests.Contract;

/// <summary>What a test does with a raw client socket: send, receive, reset.</summary>
internal static class RawClient
{
    /// <summary>Deterministic, non-repeating-per-block bytes, so a reordered or duplicated block changes the hash.</summary>
    public static byte[] CreatePayload(int length, int seed = 0)
    {
        var payload = new byte[length];
        new Random(length ^ seed).NextBytes(payload);
        return payload;
    }

    public static async Task SendAllAsync(Socket socket, ReadOnlyMemory<byte> data)
    {
        while (!data.IsEmpty)
        {
            int sent = await socket.SendAsync(data, SocketFlags.None).DefaultTimeout();
            data = data[sent..];
        }
    }

    /// <summary>Receives until the peer's FIN (a zero-byte receive); a reset surfaces as <see cref="SocketException"/>.</summary>
    public static async Task<byte[]> ReceiveToEndAsync(Socket socket)
    {
        using var received = new MemoryStream();
        var buffer = new byte[64 * 1024];
        while (true)
        {
            int read = await socket.ReceiveAsync(buffer, SocketFlags.None).DefaultTimeout();
            if (read == 0)
            {
                return received.ToArray();
            }

            received.Write(buffer, 0, read);
        }
    }

    public static async Task<byte[]> ReceiveExactlyAsync(Socket socket, int length)
    {
        var buffer = new byte[length];
        int total = 0;
        while (total < length)
        {
            int read = await socket.ReceiveAsync(buffer.AsMemory(total), SocketFlags.None).DefaultTimeout();
            Assert.True(read > 0, $"The connection ended after {total} of {length} bytes.");
            total += read;
        }

        return buffer;
    }

    /// <summary>Closes with SO_LINGER 0, which makes the kernel send RST instead of FIN.</summary>
    public static void Reset(Socket socket)
    {
        socket.LingerState = new LingerOption(true, 0);
        socket.Close();
    }

    /// <summary>Sends <paramref name="payload"/>, half-closes, and returns everything received until the server's FIN.</summary>
    public static async Task<byte[]> ExchangeAsync(Socket socket, byte[] payload)
    {
        // Receive while sending: a large payload would otherwise fill both directions' buffers and stall.
        Task<byte[]> receive = ReceiveToEndAsync(socket);
        await SendAllAsync(socket, payload);
        socket.Shutdown(SocketShutdown.Send);
        return await receive.LongTimeout();
    }

    public static string Hash(ReadOnlySpan<byte> data) => Convert.ToHexString(SHA256.HashData(data));
}
