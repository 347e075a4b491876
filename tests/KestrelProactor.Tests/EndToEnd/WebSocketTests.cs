using System.Net.WebSockets;
using KestrelProactor.Tests.Infrastructure;

namespace KestrelProactor.Tests.EndToEnd;

public sealed class WebSocketTests
{
    // Around the frame-header length steps (125/126, 65535/65536), a receive buffer, and 1 MiB.
    private static readonly int[] s_messageSizes = [0, 1, 125, 126, 4096, 16 * 1024 + 1, 65_535, 65_536, 1024 * 1024];

    [Theory]
    [MemberData(nameof(TransportMatrix.All), MemberType = typeof(TransportMatrix))]
    public async Task Echo_MessagesOfManySizes_ComeBackIntact(TransportKind kind, TransportEndpoint endpoint)
    {
        await using var server = await E2EServer.StartAsync(kind, endpoint);
        var cancellationToken = TestContext.Current.CancellationToken;
        using var socket = new ClientWebSocket();
        socket.Options.CollectHttpResponseDetails = true;
        var uri = new UriBuilder(server.BaseAddress) { Scheme = "ws", Path = "/ws" }.Uri;

        await server.ConnectWebSocketAsync(socket, uri, cancellationToken).DefaultTimeout();
        Assert.NotNull(socket.HttpResponseHeaders);
        Assert.True(socket.HttpResponseHeaders.TryGetValue(E2EApp.TransportHeader, out var transport));
        server.AssertServedByExpectedTransport(Assert.Single(transport));

        int seed = 0;
        foreach (int size in s_messageSizes)
        {
            byte[] message = PatternData.Create(size, seed++);
            await SendInFragmentsAsync(socket, message, cancellationToken).LongTimeout();
            byte[] echoed = await ReceiveMessageAsync(socket, WebSocketMessageType.Binary, cancellationToken).LongTimeout();
            Assert.Equal(message, echoed);
        }

        await socket.CloseAsync(WebSocketCloseStatus.NormalClosure, "done", cancellationToken).DefaultTimeout();
        Assert.Equal(WebSocketCloseStatus.NormalClosure, socket.CloseStatus);
    }

    private static async Task SendInFragmentsAsync(ClientWebSocket socket, byte[] message, CancellationToken cancellationToken)
    {
        const int FragmentSize = 64 * 1024;
        int offset = 0;
        do
        {
            int count = Math.Min(FragmentSize, message.Length - offset);
            bool last = offset + count == message.Length;
            await socket.SendAsync(message.AsMemory(offset, count), WebSocketMessageType.Binary, last, cancellationToken);
            offset += count;
        }
        while (offset < message.Length);
    }

    private static async Task<byte[]> ReceiveMessageAsync(ClientWebSocket socket, WebSocketMessageType expectedType, CancellationToken cancellationToken)
    {
        using var message = new MemoryStream();
        var buffer = new byte[32 * 1024];
        while (true)
        {
            var result = await socket.ReceiveAsync(buffer.AsMemory(), cancellationToken);
            Assert.Equal(expectedType, result.MessageType);
            message.Write(buffer, 0, result.Count);
            if (result.EndOfMessage)
            {
                return message.ToArray();
            }
        }
    }
}
