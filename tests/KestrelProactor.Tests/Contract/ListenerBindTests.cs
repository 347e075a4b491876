using System.Net;
using System.Net.Sockets;
using KestrelProactor.Tests.Infrastructure;
using Microsoft.AspNetCore.Connections;

namespace KestrelProactor.Tests.Contract;

/// <summary>
/// Contract: <c>BindAsync</c> binds and listens before returning, resolves port 0, and maps EADDRINUSE. Each test
/// binds the IP endpoint it is about, so these run every kind without the endpoint dimension.
/// </summary>
public sealed class ListenerBindTests
{
    [Theory]
    [MemberData(nameof(TransportMatrix.Presets), MemberType = typeof(TransportMatrix))]
    public async Task BindAsync_LoopbackPortZero_ReportsAssignedPort(TransportKind kind)
    {
        // Arrange
        await using ListenerHarness harness = await ListenerHarness.BindAsync(kind, new IPEndPoint(IPAddress.Loopback, 0));

        // Act
        var bound = Assert.IsType<IPEndPoint>(harness.EndPoint);
        Socket client = await harness.ConnectAsync(new IPEndPoint(IPAddress.Loopback, bound.Port));
        ConnectionContext connection = await harness.AcceptAsync();

        // Assert
        Assert.NotEqual(0, bound.Port);
        Assert.Equal(IPAddress.Loopback, bound.Address);
        Assert.Equal(client.LocalEndPoint, connection.RemoteEndPoint);
    }

    [Theory]
    [MemberData(nameof(TransportMatrix.Presets), MemberType = typeof(TransportMatrix))]
    public async Task BindAsync_IPv6Any_AcceptsIPv4Client(TransportKind kind)
    {
        // Arrange
        await using ListenerHarness harness = await ListenerHarness.BindAsync(kind, new IPEndPoint(IPAddress.IPv6Any, 0));
        var bound = Assert.IsType<IPEndPoint>(harness.EndPoint);

        // Act
        Socket client = await harness.ConnectAsync(new IPEndPoint(IPAddress.Loopback, bound.Port));
        ConnectionContext connection = await harness.AcceptAsync();
        byte[] echoed = await ExchangeOneMessageAsync(client, connection);

        // Assert: the server sees the IPv4 client as an IPv4-mapped IPv6 address on a dual-mode socket.
        Assert.NotEqual(0, bound.Port);
        Assert.Equal(AddressFamily.InterNetwork, client.AddressFamily);
        var remote = Assert.IsType<IPEndPoint>(connection.RemoteEndPoint);
        IPAddress remoteAddress = remote.Address.IsIPv4MappedToIPv6 ? remote.Address.MapToIPv4() : remote.Address;
        Assert.Equal(IPAddress.Loopback, remoteAddress);
        Assert.Equal(((IPEndPoint)client.LocalEndPoint!).Port, remote.Port);
        Assert.Equal("dual-mode"u8.ToArray(), echoed);
    }

    [Theory]
    [MemberData(nameof(TransportMatrix.Presets), MemberType = typeof(TransportMatrix))]
    public async Task BindAsync_IPv6Loopback_AcceptsIPv6Client(TransportKind kind)
    {
        // Arrange
        Assert.SkipUnless(Socket.OSSupportsIPv6, "IPv6 is not available on this machine.");
        await using ListenerHarness harness = await ListenerHarness.BindAsync(kind, new IPEndPoint(IPAddress.IPv6Loopback, 0));
        var bound = Assert.IsType<IPEndPoint>(harness.EndPoint);

        // Act
        Socket client = await harness.ConnectAsync(new IPEndPoint(IPAddress.IPv6Loopback, bound.Port));
        ConnectionContext connection = await harness.AcceptAsync();
        byte[] echoed = await ExchangeOneMessageAsync(client, connection);

        // Assert
        Assert.NotEqual(0, bound.Port);
        Assert.Equal(IPAddress.IPv6Loopback, bound.Address);
        Assert.Equal(client.LocalEndPoint, connection.RemoteEndPoint);
        Assert.Equal("dual-mode"u8.ToArray(), echoed);
    }

    [Theory]
    [MemberData(nameof(TransportMatrix.Presets), MemberType = typeof(TransportMatrix))]
    public async Task BindAsync_PortHeldByAnotherListener_ThrowsAddressInUseException(TransportKind kind)
    {
        // Arrange
        await using ListenerHarness first = await ListenerHarness.BindAsync(kind, new IPEndPoint(IPAddress.Loopback, 0));
        IConnectionListenerFactory factory = ContractTransports.Create(kind);

        try
        {
            // Act: the socket transport throws synchronously from BindAsync; a faulted task is just as good.
            Func<Task> bind = async () => await factory.BindAsync(new IPEndPoint(IPAddress.Loopback, first.Port), TestContext.Current.CancellationToken).DefaultTimeout();

            // Assert
            await Assert.ThrowsAsync<AddressInUseException>(bind);
        }
        finally
        {
            if (factory is IAsyncDisposable disposable)
            {
                await disposable.DisposeAsync().DefaultTimeout();
            }
        }
    }

    [Theory]
    [MemberData(nameof(TransportMatrix.Presets), MemberType = typeof(TransportMatrix))]
    public async Task BindAsync_PortHeldByRawSocket_ThrowsAddressInUseException(TransportKind kind)
    {
        // Arrange
        using var holder = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        holder.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        holder.Listen();
        int port = ((IPEndPoint)holder.LocalEndPoint!).Port;
        IConnectionListenerFactory factory = ContractTransports.Create(kind);

        try
        {
            // Act: the socket transport throws synchronously from BindAsync; a faulted task is just as good.
            Func<Task> bind = async () => await factory.BindAsync(new IPEndPoint(IPAddress.Loopback, port), TestContext.Current.CancellationToken).DefaultTimeout();

            // Assert
            await Assert.ThrowsAsync<AddressInUseException>(bind);
        }
        finally
        {
            if (factory is IAsyncDisposable disposable)
            {
                await disposable.DisposeAsync().DefaultTimeout();
            }
        }
    }

    private static async Task<byte[]> ExchangeOneMessageAsync(Socket client, ConnectionContext connection)
    {
        Task echo = ServerPipes.EchoAsync(connection);
        byte[] echoed = await RawClient.ExchangeAsync(client, "dual-mode"u8.ToArray());
        await echo.DefaultTimeout();
        return echoed;
    }
}
