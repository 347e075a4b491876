using System.Net;
using System.Net.Sockets;
using KestrelProactor.Tests.Infrastructure;
using Microsoft.AspNetCore.Connections;

namespace KestrelProactor.Tests.Contract;

/// <summary>
/// Contract: the endpoints besides <see cref="IPEndPoint"/> that Kestrel binds through a transport. Each test binds
/// the endpoint it is about, so these run every kind without the endpoint dimension.
/// </summary>
public sealed class EndPointKindTests
{
    [Theory]
    [MemberData(nameof(TransportMatrix.Presets), MemberType = typeof(TransportMatrix))]
    public async Task BindAsync_UnixDomainSocket_EchoesAndSendsFin(TransportKind kind)
    {
        Assert.SkipWhen(OperatingSystem.IsWindows(), "Unix domain sockets with file paths are not covered on Windows (Wine has no AF_UNIX).");
        // Arrange
        string directory = Directory.CreateTempSubdirectory("kp-uds-").FullName;
        try
        {
            var endpoint = new UnixDomainSocketEndPoint(Path.Combine(directory, "listener.sock"));
            byte[] payload = RawClient.CreatePayload(100_000);
            await using (ListenerHarness harness = await ListenerHarness.BindAsync(kind, endpoint))
            {
                Socket client = await harness.ConnectAsync();
                ConnectionContext connection = await harness.AcceptAsync();
                Task echo = ServerPipes.EchoAsync(connection);

                // Act: ExchangeAsync returns only after the server's FIN.
                byte[] echoed = await RawClient.ExchangeAsync(client, payload);
                await echo.DefaultTimeout();

                // Assert
                Assert.IsType<UnixDomainSocketEndPoint>(harness.EndPoint);
                Assert.Equal(RawClient.Hash(payload), RawClient.Hash(echoed));
            }
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }

    [Theory]
    [MemberData(nameof(TransportMatrix.Presets), MemberType = typeof(TransportMatrix))]
    public async Task BindAsync_FileHandleOfListeningSocket_AcceptsAndEchoes(TransportKind kind)
    {
        Assert.SkipWhen(OperatingSystem.IsWindows(), "Handing over a listen socket by handle needs WSADuplicateSocket on Windows; the test duplicates with dup(2).");
        // Arrange: like systemd socket activation, the listening socket exists before the transport sees it. The
        // transport owns the handle it is given (the socket transport closes it on dispose), so it gets a duplicate
        // and this test keeps and closes its own descriptor.
        using var listenSocket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listenSocket.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listenSocket.Listen();
        var listenEndPoint = (IPEndPoint)listenSocket.LocalEndPoint!;
        nint handedOver = SocketOptionReader.Duplicate(listenSocket.Handle);
        var endpoint = new FileHandleEndPoint((ulong)handedOver, FileHandleType.Tcp);
        byte[] payload = RawClient.CreatePayload(64 * 1024);

        await using ListenerHarness harness = await ListenerHarness.BindAsync(kind, endpoint);
        Socket client = await harness.ConnectAsync(listenEndPoint);
        ConnectionContext connection = await harness.AcceptAsync();
        Task echo = ServerPipes.EchoAsync(connection);

        // Act
        byte[] echoed = await RawClient.ExchangeAsync(client, payload);
        await echo.DefaultTimeout();

        // Assert
        Assert.Equal(RawClient.Hash(payload), RawClient.Hash(echoed));
        Assert.Equal(client.LocalEndPoint, connection.RemoteEndPoint);
    }
}
