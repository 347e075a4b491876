using System.Net.Sockets;
using System.Text;
using KestrelProactor.Tests.EndToEnd;
using KestrelProactor.Tests.Infrastructure;
using KestrelProactor.Tests.Pipes;

namespace KestrelProactor.Tests.Receive;

/// <summary>
/// Memory grows with bytes, not packets: a client sending one byte per packet, each a receive of its own (it sends
/// the next only once the server has read the last), through real Kestrel. The socket transport runs the same tests
/// as the reference.
/// </summary>
public sealed class TrickleTests
{
    /// <summary>A request head as long as the one that made the input hold 1,803 pooled blocks (about 7 MiB).</summary>
    private const int HeadLength = 1893;

    /// <summary>The transport's default receive buffer, for the lent buffers held.</summary>
    private const int ReceiveBufferSize = 16 * 1024;

    [Theory]
    [MemberData(nameof(TransportFactories.All), MemberType = typeof(TransportFactories))]
    public async Task IncompleteHead_OneBytePerPacket_HoldsAHandfulOfBlocks(TransportKind kind)
    {
        await using ReceiveServer server = await ReceiveServer.StartAsync(kind);
        (Socket client, ReadProgress progress) = await server.ConnectAsync();
        using Socket _ = client;
        byte[] head = RequestHead("GET / HTTP/1.1", HeadLength);

        // Act: Kestrel examines all of an unfinished header line and consumes none of it, so the server holds it all.
        for (int i = 0; i < head.Length; i++)
        {
            await client.SendAsync(head.AsMemory(i, 1)).DefaultTimeout();
            await progress.WaitForAsync(i + 1).DefaultTimeout();
        }

        long lent = server.LentBuffers;
        long held = server.Pool.Bytes + (lent * ReceiveBufferSize);
        TestContext.Current.TestOutputHelper?.WriteLine(
            $"{kind}: {head.Length} bytes held in {server.Pool.Blocks} pool blocks ({server.Pool.Bytes} bytes) and {lent} lent buffers; peak {server.Pool.PeakBlocks} blocks.");
        var http = new RawHttp(client);
        await http.SendAsciiAsync("\r\n\r\n", TestContext.Current.CancellationToken).DefaultTimeout();
        var (status, _, body) = await http.ReadResponseAsync(TestContext.Current.CancellationToken).DefaultTimeout();

        // Assert: the request was served, and the head cost about what it weighs (it used to cost a block per byte).
        Assert.Equal("HTTP/1.1 200 OK", status);
        Assert.Equal("ok", Encoding.ASCII.GetString(body));
        Assert.True(server.Pool.Rented > 0, "The transport did not use the counting pool: the test measured nothing.");
        Assert.InRange(server.Pool.PeakBlocks, 1, 8);
        Assert.InRange(held, 1, (4 * head.Length) + ReceiveBufferSize);
    }

    [Theory]
    [MemberData(nameof(TransportFactories.All), MemberType = typeof(TransportFactories))]
    public async Task Upload_OneBytePerPacket_EveryByteArrives(TransportKind kind)
    {
        const int BodyLength = 9000;
        const int Seed = 11;
        await using ReceiveServer server = await ReceiveServer.StartAsync(kind);
        (Socket client, ReadProgress progress) = await server.ConnectAsync();
        using Socket _ = client;
        byte[] head = Encoding.ASCII.GetBytes($"POST /verify/{Seed} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {BodyLength}\r\n\r\n");
        byte[] body = StreamPattern.Create(0, BodyLength, Seed);
        await client.SendAsync(head).DefaultTimeout();
        await progress.WaitForAsync(head.Length).DefaultTimeout();

        // Act: past block and buffer boundaries, one receive per byte.
        for (int i = 0; i < body.Length; i++)
        {
            await client.SendAsync(body.AsMemory(i, 1)).DefaultTimeout();
            await progress.WaitForAsync(head.Length + i + 1).DefaultTimeout();
        }

        var (status, _, response) = await new RawHttp(client).ReadResponseAsync(TestContext.Current.CancellationToken).DefaultTimeout();

        // Assert
        Assert.Equal("HTTP/1.1 200 OK", status);
        Assert.Equal($"match {BodyLength}", Encoding.ASCII.GetString(response));
        Assert.InRange(server.Pool.PeakBlocks, 1, 8);
    }

    /// <summary>
    /// A request head of exactly <paramref name="length"/> bytes whose last header line is unfinished: Kestrel
    /// consumes each complete line as it parses it, so the long last line is what stays unconsumed (it is ended,
    /// with the head, by sending CRLF CRLF).
    /// </summary>
    internal static byte[] RequestHead(string requestLine, int length)
    {
        string start = $"{requestLine}\r\nHost: localhost\r\nX-Trickle: ";
        byte[] head = Encoding.ASCII.GetBytes(start + new string('a', length - start.Length));
        Assert.Equal(length, head.Length);
        return head;
    }
}
