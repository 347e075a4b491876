using System.Net.Sockets;
using System.Runtime.InteropServices;
using KestrelProactor.Internal;
using KestrelProactor.Tests.Infrastructure;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Connections.Features;
using Microsoft.Extensions.Logging;

namespace KestrelProactor.Tests.Contract;

/// <summary>
/// Contract: applications reach a connection's socket through <see cref="IConnectionSocketFeature"/> (to set options,
/// read the peer's address or credentials) and, on the proactor, through
/// <see cref="IProactorConnectionFeature.SocketHandle"/>. Neither view owns the descriptor: the transport closes it,
/// once, and not while the application is in a call on it.
/// </summary>
public sealed class SocketFeatureTests
{
    public static TheoryData<TransportKind> ProactorKinds => new(TransportFactories.Kinds.Where(ContractTransports.IsProactor));

    [Theory]
    [MemberData(nameof(TransportFactories.All), MemberType = typeof(TransportFactories))]
    public async Task SocketFeature_SetsAnOptionOnTheDescriptorAndReadsThePeer_ConnectionStillServes(TransportKind kind)
    {
        // Arrange
        await using ListenerHarness harness = await ListenerHarness.BindAsync(kind);
        (Socket client, ConnectionContext connection) = await harness.ConnectAndAcceptAsync();
        SafeHandle descriptor = DescriptorOf(connection);

        // Act
        Socket socket = Assert.IsAssignableFrom<IConnectionSocketFeature>(connection.Features[typeof(IConnectionSocketFeature)]).Socket;
        socket.NoDelay = false;
        bool offOnDescriptor = SocketOptionReader.GetTcpNoDelay(descriptor);
        socket.SetSocketOption(SocketOptionLevel.Tcp, SocketOptionName.NoDelay, true);
        bool onOnDescriptor = SocketOptionReader.GetTcpNoDelay(descriptor);

        // Assert: what is set through the Socket is set on the connection's descriptor, and read back through it.
        Assert.False(offOnDescriptor);
        Assert.True(onOnDescriptor);
        Assert.Equal(1, (int)socket.GetSocketOption(SocketOptionLevel.Tcp, SocketOptionName.NoDelay)!);
        Assert.Same(socket, connection.Features.Get<IConnectionSocketFeature>()!.Socket);
        Assert.Equal(client.LocalEndPoint, socket.RemoteEndPoint);
        Assert.Equal(client.RemoteEndPoint, socket.LocalEndPoint);
        Assert.True(socket.Connected);

        // The transport's own I/O is undisturbed by the view.
        await RawClient.SendAllAsync(client, "ping"u8.ToArray());
        Assert.Equal("ping"u8.ToArray(), await ServerPipes.ReadExactlyAsync(connection.Transport.Input, 4));
        await connection.Transport.Output.WriteAsync("pong"u8.ToArray(), TestContext.Current.CancellationToken).DefaultTimeout();
        Assert.Equal("pong"u8.ToArray(), await RawClient.ReceiveExactlyAsync(client, 4));
    }

    [Theory]
    [MemberData(nameof(ProactorKinds))]
    public async Task Views_ConnectionEnds_DescriptorClosedOnceByTheTransportAndViewsClosed(TransportKind kind)
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "Reads the descriptor table from /proc.");
        // Arrange: both views in use.
        var logs = new CapturingLoggerFactory();
        await using ListenerHarness harness = await ListenerHarness.BindAsync(kind, loggerFactory: logs);
        (Socket client, ConnectionContext connection) = await harness.ConnectAndAcceptAsync();
        Socket socket = connection.Features.Get<IConnectionSocketFeature>()!.Socket;
        SafeHandle handle = connection.Features.Get<IProactorConnectionFeature>()!.SocketHandle;
        int fd = (int)socket.Handle;
        Assert.Equal(fd, (int)handle.DangerousGetHandle());
        string? target = DescriptorTable.Target(fd);
        Assert.StartsWith("socket:[", target);
        Task closed = ServerPipes.WhenClosedAsync(connection);

        // Act: a graceful end.
        await harness.DisposeConnectionAsync(connection);
        await closed.DefaultTimeout();

        // Assert: the peer got FIN; the socket is gone from the descriptor table (not leaked); the transport's close
        // found the descriptor open (a view that closed it first would make that close fail with EBADF); and the
        // views report the end instead of reaching whatever the number names next.
        Assert.Empty(await RawClient.ReceiveToEndAsync(client));
        Assert.NotEqual(target, DescriptorTable.Target(fd));
        Assert.DoesNotContain(logs.Entries, e => e.EventId.Name == "ConnectionError");
        Assert.True(handle.IsClosed);
        Assert.Throws<ObjectDisposedException>(() => socket.NoDelay = true);
        Assert.True(connection.Features.Get<IProactorConnectionFeature>()!.SocketHandle.IsClosed);
    }

    [Theory]
    [MemberData(nameof(ProactorKinds))]
    public async Task SocketHandle_ReferenceHeldWhileAborted_DescriptorStaysOpenUntilReleased(TransportKind kind)
    {
        Assert.SkipWhen(TestHost.IsWine, TestHost.WineResetBeforeReceive);
        // Arrange: the application is in a call on the handle (a P/Invoke marshalling it holds such a reference).
        await using ListenerHarness harness = await ListenerHarness.BindAsync(kind);
        (Socket client, ConnectionContext connection) = await harness.ConnectAndAcceptAsync();
        var proactor = (ProactorConnection)connection;
        SafeHandle handle = connection.Features.Get<IProactorConnectionFeature>()!.SocketHandle;
        bool added = false;
        handle.DangerousAddRef(ref added);
        Assert.True(added);
        int fd = (int)handle.DangerousGetHandle();
        string? target = OperatingSystem.IsLinux() ? DescriptorTable.Target(fd) : null;
        Task closed = ServerPipes.WhenClosedAsync(connection);

        // Act
        connection.Abort(new ConnectionAbortedException("The test aborted the connection."));
        await WaitUntilAsync(() => proactor.AwaitsApplicationViews || closed.IsCompleted, "the close to reach the descriptor");

        // Assert: the close waits; the descriptor is still this connection's socket and usable through the handle.
        Assert.False(closed.IsCompleted, "ConnectionClosed fired while the application held a reference to the socket handle.");
        if (OperatingSystem.IsLinux())
        {
            Assert.Equal(target, DescriptorTable.Target(fd));
        }

        Assert.True(SocketOptionReader.GetTcpNoDelay(handle));

        // Act: the call returns its reference; the close goes on.
        handle.DangerousRelease();
        await closed.DefaultTimeout();

        // Assert
        Assert.True(handle.IsClosed);
        SocketException reset = await Assert.ThrowsAsync<SocketException>(() => RawClient.ReceiveToEndAsync(client));
        Assert.Equal(SocketError.ConnectionReset, reset.SocketErrorCode);
        if (OperatingSystem.IsLinux())
        {
            Assert.NotEqual(target, DescriptorTable.Target(fd));
        }
    }

    [Theory]
    [MemberData(nameof(ProactorKinds))]
    public async Task Views_AskedForAfterTheConnectionEnded_ReportItClosed(TransportKind kind)
    {
        // Arrange
        await using ListenerHarness harness = await ListenerHarness.BindAsync(kind);
        (_, ConnectionContext connection) = await harness.ConnectAndAcceptAsync();
        var feature = (IConnectionSocketFeature)connection.Features[typeof(IConnectionSocketFeature)]!;
        Task closed = ServerPipes.WhenClosedAsync(connection);

        // Act
        connection.Abort(new ConnectionAbortedException("The test aborted the connection."));
        await closed.DefaultTimeout();

        // Assert: no view is made over a number that may name another file by now.
        Assert.Throws<ObjectDisposedException>(() => feature.Socket);
        SafeHandle handle = connection.Features.Get<IProactorConnectionFeature>()!.SocketHandle;
        Assert.True(handle.IsClosed);
    }

    private static SafeHandle DescriptorOf(ConnectionContext connection)
        => connection is ProactorConnection proactor
            ? proactor.Socket
            : connection.Features.Get<IConnectionSocketFeature>()!.Socket.SafeHandle;

    private static async Task WaitUntilAsync(Func<bool> condition, string what)
    {
        long deadline = Environment.TickCount64 + (long)TestTimeouts.Default.TotalMilliseconds;
        while (!condition())
        {
            Assert.True(Environment.TickCount64 < deadline, $"Timed out waiting for {what}.");
            await Task.Delay(10, TestContext.Current.CancellationToken);
        }
    }

    /// <summary>What a descriptor number names in this process (Linux): its /proc/self/fd link, or null when closed.</summary>
    private static class DescriptorTable
    {
        public static string? Target(int fd)
        {
            try
            {
                return new FileInfo($"/proc/self/fd/{fd}").LinkTarget;
            }
            catch (IOException)
            {
                return null;
            }
        }
    }
}
