using KestrelProactor.Tests.Infrastructure;
using Microsoft.AspNetCore.Connections;

namespace KestrelProactor.Tests.Contract;

/// <summary>
/// Kestrel's shutdown order (unbind, close connections, dispose), and repeated disposal, which .NET's
/// <see cref="IAsyncDisposable"/> guidance requires to be harmless.
/// </summary>
public sealed class LifecycleTests
{
    [Theory]
    [MemberData(nameof(TransportMatrix.All), MemberType = typeof(TransportMatrix))]
    public async Task DisposeAsync_ListenerTwice_Completes(TransportKind kind, TransportEndpoint endpoint)
    {
        // Arrange
        await using ListenerHarness harness = await ListenerHarness.BindAsync(kind, endpoint);
        await harness.Listener.UnbindAsync(TestContext.Current.CancellationToken).DefaultTimeout();

        // Act
        await harness.DisposeListenerAsync();
        Exception? error = await Record.ExceptionAsync(() => harness.Listener.DisposeAsync().DefaultTimeout());

        // Assert
        Assert.Null(error);
    }

    [Theory]
    [MemberData(nameof(TransportMatrix.All), MemberType = typeof(TransportMatrix))]
    public async Task DisposeAsync_ConnectionTwice_Completes(TransportKind kind, TransportEndpoint endpoint)
    {
        // Arrange
        await using ListenerHarness harness = await ListenerHarness.BindAsync(kind, endpoint);
        (_, ConnectionContext connection) = await harness.ConnectAndAcceptAsync();

        // Act
        await harness.DisposeConnectionAsync(connection);
        Exception? error = await Record.ExceptionAsync(() => connection.DisposeAsync().DefaultTimeout());

        // Assert
        Assert.Null(error);
    }

    [Theory]
    [MemberData(nameof(TransportMatrix.All), MemberType = typeof(TransportMatrix))]
    public async Task UnbindAsync_WithOpenConnection_ConnectionKeepsWorking(TransportKind kind, TransportEndpoint endpoint)
    {
        // Arrange: Kestrel unbinds first and drains connections afterwards, so unbinding must not touch them.
        await using ListenerHarness harness = await ListenerHarness.BindAsync(kind, endpoint);
        (System.Net.Sockets.Socket client, ConnectionContext connection) = await harness.ConnectAndAcceptAsync();
        Task echo = ServerPipes.EchoAsync(connection);

        // Act
        await harness.Listener.UnbindAsync(TestContext.Current.CancellationToken).DefaultTimeout();
        byte[] echoed = await RawClient.ExchangeAsync(client, "still here"u8.ToArray());
        await echo.DefaultTimeout();

        // Assert
        Assert.Equal("still here"u8.ToArray(), echoed);
    }

    [Theory]
    [MemberData(nameof(TransportMatrix.All), MemberType = typeof(TransportMatrix))]
    public async Task AbortThenDisposeAsync_InKestrelShutdownOrder_Completes(TransportKind kind, TransportEndpoint endpoint)
    {
        // Arrange: a connection with a read pending, as an idle keep-alive connection has at shutdown.
        await using ListenerHarness harness = await ListenerHarness.BindAsync(kind, endpoint);
        (_, ConnectionContext connection) = await harness.ConnectAndAcceptAsync();
        Task closed = ServerPipes.WhenClosedAsync(connection);
        ValueTask<System.IO.Pipelines.ReadResult> pendingRead = connection.Transport.Input.ReadAsync(TestContext.Current.CancellationToken);

        // Act
        await harness.Listener.UnbindAsync(TestContext.Current.CancellationToken).DefaultTimeout();
        connection.Abort(new ConnectionAbortedException("The server is shutting down."));
        await pendingRead.AsTask().EndsWithinDefaultTimeout();
        await harness.DisposeConnectionAsync(connection);
        await harness.DisposeListenerAsync();

        // Assert
        await closed.DefaultTimeout();
    }
}
