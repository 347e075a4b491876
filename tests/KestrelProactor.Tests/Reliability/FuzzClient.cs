using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using System.Text;

namespace KestrelProactor.Tests.Reliability;

/// <summary>The kinds of bad input <see cref="FuzzClient"/> sends.</summary>
public enum FuzzInput
{
    RandomBytes,
    MutatedHttp11,
    Http2FramesAfterPreface,
    TruncatedClientHello,
}

/// <summary>
/// Sends one piece of bad input per connection, half-closes, and reads until the server ends the connection.
/// Deterministic for a seed, so a failure can be replayed.
/// </summary>
internal sealed class FuzzClient(int seed)
{
    private static readonly string[] s_validRequests =
    [
        "GET /hello HTTP/1.1\r\nHost: localhost\r\n\r\n",
        "GET /hello?x=1&y=%20 HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\nUser-Agent: fuzz\r\nCookie: a=b; c=d\r\n\r\n",
        "POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 11\r\n\r\nhello world",
        "POST /echo HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        "GET /hello HTTP/1.1\r\nHost: localhost\r\n\r\nGET /hello HTTP/1.1\r\nHost: localhost\r\n\r\n",
        "GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n\u0082\u0085\u0001\u0002\u0003\u0004abcde",
        "OPTIONS * HTTP/1.1\r\nHost: localhost\r\n\r\n",
        "GET http://localhost/hello HTTP/1.0\r\n\r\n",
    ];

    private static readonly byte[] s_http2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"u8.ToArray();

    private readonly Random _random = new(seed);

    public byte[] Create(FuzzInput input) => input switch
    {
        FuzzInput.RandomBytes => RandomBytes(_random.Next(1, 4096)),
        FuzzInput.MutatedHttp11 => Mutate(Encoding.Latin1.GetBytes(s_validRequests[_random.Next(s_validRequests.Length)])),
        FuzzInput.Http2FramesAfterPreface => Http2Frames(),
        FuzzInput.TruncatedClientHello => TruncatedClientHello(),
        _ => throw new ArgumentOutOfRangeException(nameof(input)),
    };

    /// <summary>Connects, sends <paramref name="payload"/>, half-closes and waits for the server to end the connection.</summary>
    public static async Task<ConnectionEnd> RunOneAsync(IPEndPoint endPoint, byte[] payload, TimeSpan timeout)
    {
        using Socket socket = await RawClient.ConnectAsync(endPoint);
        try
        {
            await RawClient.SendAsync(socket, payload);
            socket.Shutdown(SocketShutdown.Send);
        }
        catch (SocketException ex) when (ex.SocketErrorCode is SocketError.ConnectionReset or SocketError.ConnectionAborted or SocketError.Shutdown)
        {
            // The server rejected the input before it was all sent.
            return ConnectionEnd.Reset;
        }

        var (end, _) = await RawClient.ReadToEndAsync(socket, timeout, keep: 0);
        return end;
    }

    private byte[] RandomBytes(int length)
    {
        var bytes = new byte[length];
        _random.NextBytes(bytes);
        return bytes;
    }

    private byte[] Mutate(byte[] valid)
    {
        var data = new List<byte>(valid);
        int mutations = _random.Next(1, 9);
        for (int m = 0; m < mutations && data.Count > 0; m++)
        {
            int at = _random.Next(data.Count);
            switch (_random.Next(7))
            {
                case 0:
                    data[at] ^= (byte)(1 << _random.Next(8));
                    break;
                case 1:
                    data[at] = (byte)_random.Next(256);
                    break;
                case 2:
                    data.InsertRange(at, RandomBytes(_random.Next(1, 64)));
                    break;
                case 3:
                    data.RemoveRange(at, Math.Min(_random.Next(1, 32), data.Count - at));
                    break;
                case 4:
                    // Duplicate a range (header lines repeated, CRLFs doubled).
                    int length = Math.Min(_random.Next(1, 64), data.Count - at);
                    data.InsertRange(at, data.GetRange(at, length));
                    break;
                case 5:
                    data.RemoveRange(at, data.Count - at);
                    break;
                default:
                    // A huge or negative-looking number where digits are.
                    data.InsertRange(at, Encoding.ASCII.GetBytes(_random.Next(2) == 0 ? "99999999999999999999" : "-1"));
                    break;
            }
        }

        return [.. data];
    }

    private byte[] Http2Frames()
    {
        var frames = new List<byte>(s_http2Preface);
        if (_random.Next(2) == 0)
        {
            // A valid empty SETTINGS first, so later frames get past the connection preface check.
            frames.AddRange(new byte[] { 0, 0, 0, 4, 0, 0, 0, 0, 0 });
        }

        int count = _random.Next(1, 11);
        for (int i = 0; i < count; i++)
        {
            int length = _random.Next(4) == 0 ? _random.Next(16_385, 1 << 24) : _random.Next(0, 512);
            int sent = Math.Min(length, _random.Next(2) == 0 ? length : _random.Next(0, 1024));
            sent = Math.Min(sent, 4096);
            var header = new byte[9];
            header[0] = (byte)(length >> 16);
            header[1] = (byte)(length >> 8);
            header[2] = (byte)length;
            header[3] = (byte)(_random.Next(4) == 0 ? _random.Next(256) : _random.Next(10));
            header[4] = (byte)_random.Next(256);
            BinaryPrimitives.WriteInt32BigEndian(header.AsSpan(5), _random.Next(4) == 0 ? _random.Next() : _random.Next(0, 8) * 2 + 1);
            frames.AddRange(header);
            frames.AddRange(RandomBytes(sent));
        }

        return [.. frames];
    }

    private byte[] TruncatedClientHello()
    {
        // A plausible TLS 1.2/1.3 ClientHello record, then cut short (and sometimes bit-flipped).
        var body = new List<byte> { 0x03, 0x03 };
        body.AddRange(RandomBytes(32));
        body.Add(32);
        body.AddRange(RandomBytes(32));
        body.AddRange(new byte[] { 0, 6, 0x13, 0x01, 0xC0, 0x2F, 0x00, 0x9C });
        body.AddRange(new byte[] { 1, 0 });
        byte[] sni = Encoding.ASCII.GetBytes("localhost");
        var extensions = new List<byte> { 0, 0, 0, (byte)(sni.Length + 5), 0, (byte)(sni.Length + 3), 0, 0, (byte)sni.Length };
        extensions.AddRange(sni);
        extensions.AddRange(new byte[] { 0, 0x10, 0, 5, 0, 3, 2, (byte)'h', (byte)'2' });
        body.Add((byte)(extensions.Count >> 8));
        body.Add((byte)extensions.Count);
        body.AddRange(extensions);

        var handshake = new List<byte> { 1, 0, (byte)(body.Count >> 8), (byte)body.Count };
        handshake.AddRange(body);
        var record = new List<byte> { 0x16, 0x03, 0x01, (byte)(handshake.Count >> 8), (byte)handshake.Count };
        record.AddRange(handshake);

        byte[] bytes = [.. record];
        int cut = _random.Next(1, bytes.Length);
        byte[] truncated = bytes[..cut];
        if (_random.Next(3) == 0)
        {
            truncated[_random.Next(truncated.Length)] ^= (byte)(1 << _random.Next(8));
        }

        return truncated;
    }
}
