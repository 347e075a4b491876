using System.Net.Sockets;
using KestrelProactor.Tests.Contract;
using KestrelProactor.Tests.Infrastructure;
using Microsoft.AspNetCore.Connections;

namespace KestrelProactor.Tests.Dispatching;

/// <summary>The send path's variants: zero-copy sends (two completions each) must deliver every byte in order.</summary>
public class SendPathTests
{
    [Theory]
    [InlineData(TransportKind.Proactor)]
    [InlineData(TransportKind.ProactorInline)]
    public async Task ZeroCopySends_LargeEcho_EveryByteArrivesInOrder(TransportKind kind)
    {
        // Arrange: every send of 1 KiB or more goes zero-copy, including gathered ones (SENDMSG_ZC).
        await using ListenerHarness harness = await ListenerHarness.BindAsync(kind, configure: o => o.ZeroCopySendThreshold = 1024);
        var factory = (ProactorTransportFactory)harness.Factory;
        (Socket client, ConnectionContext connection) = await harness.ConnectAndAcceptAsync();
        Task echo = ServerPipes.EchoAsync(connection);
        byte[] payload = RawClient.CreatePayload(8 * 1024 * 1024, seed: 11);

        // Act
        byte[] echoed = await RawClient.ExchangeAsync(client, payload).LongTimeout();
        client.Shutdown(SocketShutdown.Send);
        await echo.DefaultTimeout();

        // Assert
        Assert.Contains(factory.Backend!.FeatureSummary.Split(", "), f => f.StartsWith("send-zc", StringComparison.Ordinal));
        Assert.Equal(RawClient.Hash(payload), RawClient.Hash(echoed));
    }
}
