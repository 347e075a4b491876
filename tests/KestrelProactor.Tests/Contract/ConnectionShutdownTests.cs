using System.IO.Pipelines;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using KestrelProactor.Tests.Infrastructure;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Connections.Features;

namespace KestrelProactor.Tests.Contract;

/// <summary>
/// Contract: how each side's FIN, RST and abort show up on the other side — completing the output sends data then
/// FIN, <c>Abort</c> sends RST, a peer FIN completes the input cleanly (half-close), and a peer RST completes it
/// with <see cref="ConnectionResetException"/>.
/// </summary>
public sealed class ConnectionShutdownTests
{
    [Theory]
    [MemberData(nameof(TransportMatrix.All), MemberType = typeof(TransportMatrix))]
    public async Task OutputComplete_AfterLargeWrite_ClientReceivesAllDataThenFin(TransportKind kind, TransportEndpoint endpoint)
    {
        // Arrange
        await using ListenerHarness harness = await ListenerHarness.BindAsync(kind, endpoint);
        (Socket client, ConnectionContext connection) = await harness.ConnectAndAcceptAsync();
        byte[] payload = RawClient.CreatePayload(512 * 1024);
        Task<byte[]> receive = RawClient.ReceiveToEndAsync(client);

        // Act
        await connection.Transport.Output.WriteAsync(payload, TestContext.Current.CancellationToken).DefaultTimeout();
        await connection.Transport.Output.CompleteAsync().DefaultTimeout();

        // Assert: ReceiveToEndAsync returns only on a zero-byte receive (FIN); an RST would throw.
        byte[] received = await receive.LongTimeout();
        Assert.Equal(payload.Length, received.Length);
        Assert.Equal(RawClient.Hash(payload), RawClient.Hash(received));
    }

    [Theory]
    // Over TCP only: a Unix socket has no RST (an abort reads as end-of-stream there, with either transport).
    [MemberData(nameof(TransportMatrix.Presets), MemberType = typeof(TransportMatrix))]
    public async Task Abort_WithConnectionAbortedException_ClientSeesResetAndConnectionClosedFires(TransportKind kind)
    {
        Assert.SkipWhen(TestHost.IsWine, TestHost.WineResetBeforeReceive);
        Assert.SkipWhen(kind == TransportKind.ProactorFinOnError, "FIN on error ends an aborted connection with FIN, by design: the reset this test expects is what the option turns off.");
        // Arrange
        await using ListenerHarness harness = await ListenerHarness.BindAsync(kind);
        (Socket client, ConnectionContext connection) = await harness.ConnectAndAcceptAsync();
        Task closed = ServerPipes.WhenClosedAsync(connection);
        await connection.Transport.Output.WriteAsync("before abort"u8.ToArray(), TestContext.Current.CancellationToken).DefaultTimeout();
        Assert.Equal("before abort"u8.ToArray(), await RawClient.ReceiveExactlyAsync(client, 12));

        // Act
        connection.Abort(new ConnectionAbortedException("The test aborted the connection."));

        // Assert
        SocketException reset = await Assert.ThrowsAsync<SocketException>(() => RawClient.ReceiveToEndAsync(client));
        Assert.Equal(SocketError.ConnectionReset, reset.SocketErrorCode);
        await closed.DefaultTimeout();
    }

    [Theory]
    [MemberData(nameof(TransportMatrix.All), MemberType = typeof(TransportMatrix))]
    public async Task Input_PeerShutsDownSend_CompletesWithoutErrorAndOutputStillReachesPeer(TransportKind kind, TransportEndpoint endpoint)
    {
        // Arrange
        await using ListenerHarness harness = await ListenerHarness.BindAsync(kind, endpoint);
        (Socket client, ConnectionContext connection) = await harness.ConnectAndAcceptAsync();
        await RawClient.SendAllAsync(client, "request"u8.ToArray());

        // Act
        client.Shutdown(SocketShutdown.Send);
        byte[] request = await ServerPipes.ReadToEndAsync(connection.Transport.Input);
        await connection.Transport.Output.WriteAsync("response after FIN"u8.ToArray(), TestContext.Current.CancellationToken).DefaultTimeout();
        await connection.Transport.Output.CompleteAsync().DefaultTimeout();
        byte[] response = await RawClient.ReceiveToEndAsync(client);

        // Assert
        Assert.Equal("request"u8.ToArray(), request);
        Assert.Equal("response after FIN"u8.ToArray(), response);
    }

    [Theory]
    // Over TCP only: a Unix socket has no RST (the peer's abortive close reads as end-of-stream, with either transport).
    [MemberData(nameof(TransportMatrix.Presets), MemberType = typeof(TransportMatrix))]
    public async Task Input_PeerResets_ThrowsConnectionResetException(TransportKind kind)
    {
        Assert.SkipWhen(TestHost.IsWine, TestHost.WineResetBeforeReceive);
        // Arrange
        await using ListenerHarness harness = await ListenerHarness.BindAsync(kind);
        (Socket client, ConnectionContext connection) = await harness.ConnectAndAcceptAsync();
        await RawClient.SendAllAsync(client, "data before reset"u8.ToArray());
        Assert.Equal("data before reset"u8.ToArray(), await ServerPipes.ReadExactlyAsync(connection.Transport.Input, 17));

        // Act
        RawClient.Reset(client);

        // Assert
        await Assert.ThrowsAsync<ConnectionResetException>(() => ServerPipes.ReadToEndAsync(connection.Transport.Input));
    }

    [Theory]
    // Over TCP only: a Unix socket has no RST (the peer's abortive close reads as end-of-stream, with either transport).
    [MemberData(nameof(TransportMatrix.Presets), MemberType = typeof(TransportMatrix))]
    public async Task Input_PeerResetsDuringPendingRead_PendingReadThrowsConnectionResetException(TransportKind kind)
    {
        // Arrange
        await using ListenerHarness harness = await ListenerHarness.BindAsync(kind);
        (Socket client, ConnectionContext connection) = await harness.ConnectAndAcceptAsync();
        Task<ReadResult> pendingRead = connection.Transport.Input.ReadAsync(TestContext.Current.CancellationToken).AsTask();
        await Task.Delay(100, TestContext.Current.CancellationToken);
        Assert.False(pendingRead.IsCompleted, "The read completed before the client sent anything.");

        // Act
        RawClient.Reset(client);

        // Assert
        await Assert.ThrowsAsync<ConnectionResetException>(() => pendingRead.DefaultTimeout());
    }

    [Theory]
    [MemberData(nameof(TransportMatrix.All), MemberType = typeof(TransportMatrix))]
    public async Task Abort_WhileLargeSendIsBlocked_CompletesAndConnectionClosedFires(TransportKind kind, TransportEndpoint endpoint)
    {
        // Arrange: the client never reads, so 8 MiB cannot fit in the socket buffers and the flush stays pending.
        await using ListenerHarness harness = await ListenerHarness.BindAsync(kind, endpoint);
        (_, ConnectionContext connection) = await harness.ConnectAndAcceptAsync();
        Task closed = ServerPipes.WhenClosedAsync(connection);
        byte[] payload = RawClient.CreatePayload(8 * 1024 * 1024);
        Task<FlushResult> write = connection.Transport.Output.WriteAsync(payload, TestContext.Current.CancellationToken).AsTask();
        await Task.Delay(500, TestContext.Current.CancellationToken);
        Assert.False(write.IsCompleted, "8 MiB were flushed to a client that does not read.");

        // Act
        await Task.Run(() => connection.Abort(new ConnectionAbortedException("The test aborted a blocked send.")), TestContext.Current.CancellationToken)
            .DefaultTimeout();

        // Assert: the blocked flush must be released (its outcome is the transport's choice), and the connection must close.
        await ObserveCompletionAsync(write).DefaultTimeout();
        await closed.DefaultTimeout();
        await harness.DisposeConnectionAsync(connection);
    }

    [Theory]
    [MemberData(nameof(TransportMatrix.All), MemberType = typeof(TransportMatrix))]
    public async Task ConnectionClosed_ClientClosesAndServerDisposes_Fires(TransportKind kind, TransportEndpoint endpoint)
    {
        // Arrange
        await using ListenerHarness harness = await ListenerHarness.BindAsync(kind, endpoint);
        (Socket client, ConnectionContext connection) = await harness.ConnectAndAcceptAsync();
        Task closed = ServerPipes.WhenClosedAsync(connection);

        // Act
        client.Close();
        byte[] rest = await ServerPipes.ReadToEndAsync(connection.Transport.Input);
        await harness.DisposeConnectionAsync(connection);

        // Assert
        Assert.Empty(rest);
        await closed.DefaultTimeout();
    }

    [Theory]
    [MemberData(nameof(TransportMatrix.All), MemberType = typeof(TransportMatrix))]
    public async Task DisposeAsync_WithClientStillOpen_ClientReceivesEndOfStream(TransportKind kind, TransportEndpoint endpoint)
    {
        // Arrange
        await using ListenerHarness harness = await ListenerHarness.BindAsync(kind, endpoint);
        (Socket client, ConnectionContext connection) = await harness.ConnectAndAcceptAsync();
        Task closed = ServerPipes.WhenClosedAsync(connection);

        // Act
        await harness.DisposeConnectionAsync(connection);

        // Assert: disposing completes the output, which is a graceful close: FIN, not RST.
        await closed.DefaultTimeout();
        Assert.Empty(await RawClient.ReceiveToEndAsync(client));
    }

    [Theory]
    [MemberData(nameof(TransportMatrix.All), MemberType = typeof(TransportMatrix))]
    public async Task Abort_WithPendingRead_CompletesPendingRead(TransportKind kind, TransportEndpoint endpoint)
    {
        // Arrange
        await using ListenerHarness harness = await ListenerHarness.BindAsync(kind, endpoint);
        (_, ConnectionContext connection) = await harness.ConnectAndAcceptAsync();
        Task<ReadResult> pendingRead = connection.Transport.Input.ReadAsync(TestContext.Current.CancellationToken).AsTask();
        await Task.Delay(100, TestContext.Current.CancellationToken);
        Assert.False(pendingRead.IsCompleted, "The read completed before the client sent anything.");

        // Act
        connection.Abort(new ConnectionAbortedException("The test aborted the connection."));
        ReadResult? result = null;
        Exception? error = await Record.ExceptionAsync(async () => result = await pendingRead.DefaultTimeout());

        // Assert: the read must end without data; the socket transport faults it with the abort reason.
        TestContext.Current.TestOutputHelper?.WriteLine($"Pending read after Abort: {error?.GetType().Name ?? DescribeResult(result!.Value)}");
        if (error is null)
        {
            Assert.True(result!.Value.IsCanceled || result.Value.IsCompleted, "The pending read returned without being canceled or completed.");
            Assert.True(result.Value.Buffer.IsEmpty);
        }
        else
        {
            Assert.IsType<ConnectionAbortedException>(error);
        }
    }

    [Theory]
    [MemberData(nameof(TransportMatrix.All), MemberType = typeof(TransportMatrix))]
    public async Task Input_ReadCancelledByToken_ThrowsOperationCanceled_ThenDataStillArrives(TransportKind kind, TransportEndpoint endpoint)
    {
        // Arrange
        await using ListenerHarness harness = await ListenerHarness.BindAsync(kind, endpoint);
        (Socket client, ConnectionContext connection) = await harness.ConnectAndAcceptAsync();
        using var cancel = new CancellationTokenSource();
        Task<ReadResult> pendingRead = connection.Transport.Input.ReadAsync(cancel.Token).AsTask();

        // Act
        cancel.Cancel();
        Exception? error = await Record.ExceptionAsync(() => pendingRead.DefaultTimeout());
        await RawClient.SendAllAsync(client, "after cancel"u8.ToArray());
        byte[] received = await ServerPipes.ReadExactlyAsync(connection.Transport.Input, "after cancel".Length);

        // Assert: as with System.IO.Pipelines, a token cancels with an exception and loses no data.
        Assert.IsAssignableFrom<OperationCanceledException>(error);
        Assert.Equal("after cancel"u8.ToArray(), received);
    }

    [Theory]
    [MemberData(nameof(TransportMatrix.All), MemberType = typeof(TransportMatrix))]
    public async Task ConnectionClosed_AfterAbort_FiresOnlyOnceDescriptorIsClosed(TransportKind kind, TransportEndpoint endpoint)
    {
        // Arrange: the socket's SafeHandle is the only view of the descriptor both transports expose.
        await using ListenerHarness harness = await ListenerHarness.BindAsync(kind, endpoint);
        (_, ConnectionContext connection) = await harness.ConnectAndAcceptAsync();
        SafeHandle handle = kind == TransportKind.Sockets
            ? connection.Features.Get<IConnectionSocketFeature>()!.Socket.SafeHandle
            : connection.Features.Get<IProactorConnectionFeature>()!.SocketHandle;
        var closedSeenByCallback = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
        connection.ConnectionClosed.Register(() => closedSeenByCallback.TrySetResult(handle.IsClosed));

        // Act
        connection.Abort(new ConnectionAbortedException("The test aborted the connection."));
        bool handleWasClosed = await closedSeenByCallback.Task.DefaultTimeout();

        // Assert
        Assert.True(handleWasClosed, "ConnectionClosed fired while the socket handle was still open.");
    }

    private static string DescribeResult(ReadResult result)
        => $"IsCanceled={result.IsCanceled} IsCompleted={result.IsCompleted} Length={result.Buffer.Length}";

    private static async Task ObserveCompletionAsync(Task task)
    {
        try
        {
            await task;
        }
        catch (Exception ex) when (ex is ConnectionAbortedException or ConnectionResetException or IOException or OperationCanceledException or InvalidOperationException)
        {
            // A released flush may complete, be canceled, or fault; the contract only requires that it does not hang.
        }
    }
}
