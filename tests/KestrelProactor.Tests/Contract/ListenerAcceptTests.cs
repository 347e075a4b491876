using System.Net;
using System.Net.Sockets;
using KestrelProactor.Tests.Infrastructure;
using Microsoft.AspNetCore.Connections;

namespace KestrelProactor.Tests.Contract;

/// <summary>Contract: <c>AcceptAsync</c> returns <c>null</c> once unbound or disposed, and skips connections reset in the backlog.</summary>
public sealed class ListenerAcceptTests
{
    [Theory]
    [MemberData(nameof(TransportMatrix.All), MemberType = typeof(TransportMatrix))]
    public async Task AcceptAsync_AfterUnbind_ReturnsNull(TransportKind kind, TransportEndpoint endpoint)
    {
        // Arrange
        await using ListenerHarness harness = await ListenerHarness.BindAsync(kind, endpoint);
        await harness.Listener.UnbindAsync(TestContext.Current.CancellationToken).DefaultTimeout();

        // Act
        ConnectionContext? connection = await harness.Listener.AcceptAsync(TestContext.Current.CancellationToken).DefaultTimeout();

        // Assert
        Assert.Null(connection);
    }

    [Theory]
    [MemberData(nameof(TransportMatrix.All), MemberType = typeof(TransportMatrix))]
    public async Task AcceptAsync_AfterDispose_ReturnsNull(TransportKind kind, TransportEndpoint endpoint)
    {
        // Arrange
        await using ListenerHarness harness = await ListenerHarness.BindAsync(kind, endpoint);
        await harness.DisposeListenerAsync();

        // Act
        ConnectionContext? connection = await harness.Listener.AcceptAsync(TestContext.Current.CancellationToken).DefaultTimeout();

        // Assert
        Assert.Null(connection);
    }

    [Theory]
    [MemberData(nameof(TransportMatrix.All), MemberType = typeof(TransportMatrix))]
    public async Task AcceptAsync_PendingWhenUnbound_ReturnsNull(TransportKind kind, TransportEndpoint endpoint)
    {
        // Arrange
        await using ListenerHarness harness = await ListenerHarness.BindAsync(kind, endpoint);
        Task<ConnectionContext?> accept = harness.Listener.AcceptAsync(TestContext.Current.CancellationToken).AsTask();
        await Task.Delay(100, TestContext.Current.CancellationToken);
        Assert.False(accept.IsCompleted, "AcceptAsync completed with no client connecting.");

        // Act
        await harness.Listener.UnbindAsync(TestContext.Current.CancellationToken).DefaultTimeout();
        ConnectionContext? connection = await accept.DefaultTimeout();

        // Assert
        Assert.Null(connection);
    }

    [Theory]
    [MemberData(nameof(TransportMatrix.All), MemberType = typeof(TransportMatrix))]
    public async Task AcceptAsync_PendingWhenDisposed_ReturnsNull(TransportKind kind, TransportEndpoint endpoint)
    {
        // Arrange
        await using ListenerHarness harness = await ListenerHarness.BindAsync(kind, endpoint);
        Task<ConnectionContext?> accept = harness.Listener.AcceptAsync(TestContext.Current.CancellationToken).AsTask();
        await Task.Delay(100, TestContext.Current.CancellationToken);
        Assert.False(accept.IsCompleted, "AcceptAsync completed with no client connecting.");

        // Act
        await harness.DisposeListenerAsync();
        ConnectionContext? connection = await accept.DefaultTimeout();

        // Assert
        Assert.Null(connection);
    }

    [Theory]
    // Over TCP only: ECONNREFUSED; after unbinding a Unix socket both transports delete its file, so a client gets ENOENT.
    [MemberData(nameof(TransportMatrix.Presets), MemberType = typeof(TransportMatrix))]
    public async Task UnbindAsync_AfterUnbind_RefusesNewClients(TransportKind kind)
    {
        // Arrange
        await using ListenerHarness harness = await ListenerHarness.BindAsync(kind);
        var endpoint = (IPEndPoint)harness.EndPoint;

        // Act
        await harness.Listener.UnbindAsync(TestContext.Current.CancellationToken).DefaultTimeout();
        using var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        Task connect = client.ConnectAsync(endpoint, TestContext.Current.CancellationToken).DefaultTimeout();

        // Assert
        SocketException refused = await Assert.ThrowsAsync<SocketException>(() => connect);
        Assert.Equal(SocketError.ConnectionRefused, refused.SocketErrorCode);
    }

    [Theory]
    // Over TCP only: an RST in the backlog, and clients told apart by their port.
    [MemberData(nameof(TransportMatrix.Presets), MemberType = typeof(TransportMatrix))]
    public async Task AcceptAsync_ClientResetInBacklog_AcceptsNextClient(TransportKind kind)
    {
        // Arrange: the first client's connection completes the handshake, then resets before anyone accepts it.
        await using ListenerHarness harness = await ListenerHarness.BindAsync(kind);
        Socket resetClient = await harness.ConnectAsync();
        RawClient.Reset(resetClient);
        Socket nextClient = await harness.ConnectAsync();
        EndPoint nextClientEndPoint = nextClient.LocalEndPoint!;

        // Act: Linux hands out the reset connection from accept(); BSDs drop it. Either way, no accept may throw,
        // and the next client must come out within two accepts.
        ConnectionContext first = await harness.AcceptAsync();
        bool firstIsNext = Equals(first.RemoteEndPoint, nextClientEndPoint);
        TestContext.Current.TestOutputHelper?.WriteLine($"The reset connection was {(firstIsNext ? "skipped" : "handed out")} by AcceptAsync.");
        ConnectionContext accepted = firstIsNext ? first : await harness.AcceptAsync();
        Task echo = ServerPipes.EchoAsync(accepted);
        byte[] echoed = await RawClient.ExchangeAsync(nextClient, "after reset"u8.ToArray());
        await echo.DefaultTimeout();

        // Assert
        Assert.Equal(nextClientEndPoint, accepted.RemoteEndPoint);
        Assert.Equal("after reset"u8.ToArray(), echoed);
    }
}
