using System.Net;
using System.Net.Sockets;
using KestrelProactor.Internal;
using KestrelProactor.IoUring;
using KestrelProactor.Tests.Contract;
using KestrelProactor.Tests.Infrastructure;
using Microsoft.AspNetCore.Connections;
using KestrelProactor.Tests.Interop;

namespace KestrelProactor.Tests.Dispatching;

/// <summary>
/// Zero-copy sends (io_uring): a send's result lets the connection go on (its next send, its close), while the
/// memory the send points into stays out of the pool until the kernel's notification. The peer that stops reading
/// is the lever: bytes it does not take stay queued unacknowledged, so their notifications wait for as long as
/// the test wants.
/// </summary>
public sealed class ZeroCopySendTests
{
    private const int ChunkSize = 16 * 1024;
    private const int ChunkCount = 4;

    [Fact]
    public async Task PeerStopsReading_SeveralSendsAwaitNotifications_AbortClosesAtOnce_BlocksKeptUntilNotified()
    {
        var pool = new TrackingMemoryPool();
        await using (ListenerHarness harness = await BindAsync(pool))
        {
            using Socket client = await ConnectStalledClientAsync(harness);
            ConnectionContext connection = await harness.AcceptAsync();
            var server = (ProactorConnection)connection;
            var dispatcher = (IoUringDispatcher)server.Dispatcher;
            var closed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            connection.ConnectionClosed.Register(() => closed.TrySetResult());

            // Act: four zero-copy sends, each one's result awaited before the next flush. The peer's window takes
            // a few KiB of the first; the rest stays queued, unacknowledged, so no notification can come.
            await SendChunksAsync(connection, dispatcher, RawClient.CreatePayload(ChunkSize * ChunkCount, seed: 21));

            // Assert: the sends did not wait one for another's notification, and the pool blocks they point into are
            // still out of the pool although the output pipe consumed those bytes.
            Assert.Equal(ChunkCount, dispatcher.ZeroCopySendsAwaitingNotification);
            Assert.True(
                (long)pool.Outstanding * TrackingMemoryPool.BlockSize >= dispatcher.ZeroCopyBytesAwaitingNotification,
                $"{pool.Outstanding} blocks out of the pool for {dispatcher.ZeroCopyBytesAwaitingNotification} bytes awaiting notification");

            // Act: abort. The close must not wait for the notifications (the peer may never acknowledge).
            connection.Abort(new ConnectionAbortedException("test abort"));
            await closed.Task.DefaultTimeout();

            // Assert: the descriptor was closed abortively (the client sees the reset), which freed the queued bytes,
            // and with them came every notification.
            SocketException reset = await Assert.ThrowsAsync<SocketException>(() => DrainAsync(client));
            Assert.Equal(SocketError.ConnectionReset, reset.SocketErrorCode);
            await WaitUntilAsync(() => dispatcher.ZeroCopySendsAwaitingNotification == 0);
            Assert.Equal(0, dispatcher.ZeroCopyBytesAwaitingNotification);
            await harness.DisposeConnectionAsync(connection);
        }

        Assert.Equal(0, pool.Outstanding);
        Assert.Empty(pool.CollectErrors());
    }

    [Fact]
    public async Task PeerStopsReading_OutputCompletes_ConnectionClosesFirst_PeerThenReadsEveryByteIntact()
    {
        // The tracking pool poisons every block it gets back: a block returned while the kernel still had its pages
        // queued would reach the peer as poison once it reads.
        var pool = new TrackingMemoryPool();
        byte[] payload = RawClient.CreatePayload(ChunkSize * ChunkCount, seed: 22);
        await using (ListenerHarness harness = await BindAsync(pool))
        {
            using Socket client = await ConnectStalledClientAsync(harness);
            ConnectionContext connection = await harness.AcceptAsync();
            var server = (ProactorConnection)connection;
            var dispatcher = (IoUringDispatcher)server.Dispatcher;
            var closed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            connection.ConnectionClosed.Register(() => closed.TrySetResult());
            await SendChunksAsync(connection, dispatcher, payload);

            // Act: a graceful end while the peer still reads nothing: FIN queued after the data, descriptor closed.
            await connection.Transport.Output.CompleteAsync();
            await closed.Task.DefaultTimeout();
            Assert.True(dispatcher.ZeroCopySendsAwaitingNotification > 0, "the close waited for the notifications");
            byte[] received = await RawClient.ReceiveToEndAsync(client).LongTimeout();

            // Assert
            Assert.Equal(RawClient.Hash(payload), RawClient.Hash(received));
            await WaitUntilAsync(() => dispatcher.ZeroCopySendsAwaitingNotification == 0);
            await harness.DisposeConnectionAsync(connection);
        }

        Assert.Equal(0, pool.Outstanding);
        Assert.Empty(pool.CollectErrors());
    }

    [Fact]
    public async Task UnixDomainSocket_ZeroCopyRefused_EveryByteArrivesCopied()
    {
        // Unix domain sockets have no zero-copy: the kernel answers EOPNOTSUPP, and the same bytes go out copied.
        string directory = Directory.CreateTempSubdirectory("kp-zc-").FullName;
        try
        {
            var endpoint = new UnixDomainSocketEndPoint(Path.Combine(directory, "listener.sock"));
            await using ListenerHarness harness = await ListenerHarness.BindAsync(TransportKind.Proactor, endpoint, o =>
            {
                o.DispatcherCount = 1;
                o.ZeroCopySendThreshold = 1024; // the least the options allow
            });
            IoUringDispatcher? dispatcher = null;
            for (int i = 0; i < 2; i++)
            {
                Socket client = await harness.ConnectAsync();
                ConnectionContext connection = await harness.AcceptAsync();
                dispatcher = (IoUringDispatcher)((ProactorConnection)connection).Dispatcher;
                byte[] payload = RawClient.CreatePayload(64 * 1024, seed: 30 + i);
                Task<byte[]> received = RawClient.ReceiveToEndAsync(client);

                await connection.Transport.Output.WriteAsync(payload).AsTask().DefaultTimeout();
                await connection.Transport.Output.CompleteAsync();

                Assert.Equal(RawClient.Hash(payload), RawClient.Hash(await received.DefaultTimeout()));
            }

            // The first socket's refusal is remembered: the second connection never asked for zero-copy.
            Assert.Equal(1, dispatcher!.ZeroCopyFallbacks);
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }

    private static Task<ListenerHarness> BindAsync(TrackingMemoryPool pool)
        => ListenerHarness.BindAsync(
            TransportKind.Proactor,
            configure: o =>
            {
                o.DispatcherCount = 1;
                o.ZeroCopySendThreshold = 1024;
                // Each flush is its own send: the count of sends awaiting notification is then known.
                o.OutputCoalescingDelay = TimeSpan.Zero;
            },
            memoryPool: pool);

    /// <summary>A client that reads nothing and advertises a window of a few KiB.</summary>
    private static async Task<Socket> ConnectStalledClientAsync(ListenerHarness harness)
    {
        var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { ReceiveBufferSize = 4096 };
        try
        {
            await client.ConnectAsync(harness.EndPoint).DefaultTimeout();
            return client;
        }
        catch
        {
            client.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Writes <paramref name="payload"/> a chunk per flush, each after the previous one's result. The server's send
    /// buffer is made large enough to queue all of it, so every send completes although the peer reads nothing.
    /// </summary>
    private static async Task SendChunksAsync(ConnectionContext connection, IoUringDispatcher dispatcher, byte[] payload)
    {
        SocketDescriptor.SetSendBufferSize(((ProactorConnection)connection).Socket, 1024 * 1024);
        for (int i = 0; i < payload.Length / ChunkSize; i++)
        {
            await connection.Transport.Output.WriteAsync(payload.AsMemory(i * ChunkSize, ChunkSize)).AsTask().DefaultTimeout();
            int sent = i + 1;
            await WaitUntilAsync(() => dispatcher.ZeroCopySendsAwaitingNotification >= sent);
        }
    }

    /// <summary>Reads until the end; a reset surfaces as <see cref="SocketException"/>.</summary>
    private static async Task DrainAsync(Socket client)
    {
        var buffer = new byte[64 * 1024];
        while (await client.ReceiveAsync(buffer, SocketFlags.None).DefaultTimeout() > 0)
        {
        }
    }

    private static async Task WaitUntilAsync(Func<bool> condition)
    {
        using var timeout = new CancellationTokenSource(TestTimeouts.Default);
        while (!condition())
        {
            await Task.Delay(10, timeout.Token);
        }
    }
}
