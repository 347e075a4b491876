using System.Net.Sockets;
using KestrelProactor.Tests.Infrastructure;
using Microsoft.AspNetCore.Connections;

namespace KestrelProactor.Tests.Contract;

/// <summary>Contract: bytes written by the peer come out of <c>Transport.Input</c>, and bytes written to <c>Transport.Output</c> reach the peer, intact.</summary>
public sealed class ConnectionEchoTests
{
    [Theory]
    [MemberData(nameof(ContractTransports.KindsAndPayloadSizes), MemberType = typeof(ContractTransports))]
    public async Task TransportPipes_EchoPayload_ClientReceivesIdenticalBytes(TransportKind kind, TransportEndpoint endpoint, int payloadSize)
    {
        // Arrange
        await using ListenerHarness harness = await ListenerHarness.BindAsync(kind, endpoint);
        (Socket client, ConnectionContext connection) = await harness.ConnectAndAcceptAsync();
        byte[] payload = RawClient.CreatePayload(payloadSize);
        Task echo = ServerPipes.EchoAsync(connection);

        // Act
        byte[] echoed = await RawClient.ExchangeAsync(client, payload);
        await echo.DefaultTimeout();

        // Assert
        Assert.Equal(payload.Length, echoed.Length);
        Assert.Equal(RawClient.Hash(payload), RawClient.Hash(echoed));
    }

    [Theory]
    [MemberData(nameof(TransportMatrix.All), MemberType = typeof(TransportMatrix))]
    public async Task TransportPipes_ManySmallWritesBothWays_ArriveInOrder(TransportKind kind, TransportEndpoint endpoint)
    {
        // Arrange: a request/response ping-pong, which exercises re-arming receives and sends one message at a time.
        await using ListenerHarness harness = await ListenerHarness.BindAsync(kind, endpoint);
        (Socket client, ConnectionContext connection) = await harness.ConnectAndAcceptAsync();
        Task echo = ServerPipes.EchoAsync(connection);
        const int Rounds = 200;

        // Act
        for (int round = 0; round < Rounds; round++)
        {
            byte[] message = RawClient.CreatePayload(1 + (round * 37 % 300), seed: round);
            await RawClient.SendAllAsync(client, message);
            byte[] reply = await RawClient.ReceiveExactlyAsync(client, message.Length);

            // Assert
            Assert.Equal(message, reply);
        }

        client.Shutdown(SocketShutdown.Send);
        byte[] rest = await RawClient.ReceiveToEndAsync(client);
        await echo.DefaultTimeout();
        Assert.Empty(rest);
    }
}
