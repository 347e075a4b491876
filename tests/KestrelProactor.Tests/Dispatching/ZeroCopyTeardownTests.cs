using System.Buffers;
using System.Net.Sockets;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using KestrelProactor.Dispatching;
using KestrelProactor.Internal;
using KestrelProactor.IoUring;
using KestrelProactor.Tests.Contract;
using KestrelProactor.Tests.Infrastructure;
using KestrelProactor.Tests.Interop;
using Microsoft.AspNetCore.Connections;

namespace KestrelProactor.Tests.Dispatching;

/// <summary>
/// A ring that ends while zero-copy sends still wait for their notifications: their results arrived, the connection
/// closed, but the kernel keeps reading the pages until the peer acknowledges them, which outlives the ring. The
/// memory must then outlive the dispatcher too: kept for good, never collected or given back.
/// </summary>
public sealed class ZeroCopyTeardownTests
{
    private const int ChunkSize = 16 * 1024;
    private const int ChunkCount = 4;

    [Fact]
    public async Task StopWhilePeerReadsNothing_NotificationsPending_PagesStayAliveAndPeerReadsEveryByteIntact()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "io_uring");
        byte[] payload = RawClient.CreatePayload(ChunkSize * ChunkCount, seed: 41);
        int keptBefore = ProactorDispatcher.KeptForKernelCount;

        // Arrange and act in a method of its own: once it returns, nothing of the transport is reachable from here.
        (Socket client, WeakPool pool, int awaiting, long keptByDispatcher) = await StopWithNotificationsPendingAsync(payload);
        using (client)
        {
            Assert.True(awaiting > 0, "no zero-copy send waited for its notification when the transport stopped");

            // Assert: no block the sends point into was collected, even with the transport gone: the dispatcher kept
            // the sends still waiting when its ring closed.
            GC.Collect();
            GC.WaitForPendingFinalizers();
            GC.Collect();
            Assert.Equal(0, pool.Collected);
            Assert.Equal(awaiting, keptByDispatcher);
            Assert.True(ProactorDispatcher.KeptForKernelCount > keptBefore, "nothing was kept for the kernel");

            // Assert: the peer, reading at last, gets the bytes the kernel had queued, intact.
            byte[] received = await RawClient.ReceiveToEndAsync(client).LongTimeout();
            Assert.Equal(RawClient.Hash(payload), RawClient.Hash(received));
            Assert.Empty(pool.Inner.CollectErrors());
        }
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static async Task<(Socket Client, WeakPool Pool, int Awaiting, long Kept)> StopWithNotificationsPendingAsync(byte[] payload)
    {
        var pool = new WeakPool(new TrackingMemoryPool());
        var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { ReceiveBufferSize = 4096 };
        IoUringDispatcher dispatcher;
        await using (ListenerHarness harness = await ListenerHarness.BindAsync(
                         TransportKind.Proactor,
                         configure: o =>
                         {
                             o.DispatcherCount = 1;
                             o.ZeroCopySendThreshold = 1024;
                             o.OutputCoalescingDelay = TimeSpan.Zero;
                             o.MemoryPoolFactory = () => pool;
                         }))
        {
            await client.ConnectAsync(harness.EndPoint).DefaultTimeout();
            ConnectionContext connection = await harness.AcceptAsync();
            dispatcher = (IoUringDispatcher)((ProactorConnection)connection).Dispatcher;
            var closed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            connection.ConnectionClosed.Register(() => closed.TrySetResult());
            SocketDescriptor.SetSendBufferSize(((ProactorConnection)connection).Socket, 1024 * 1024);
            for (int i = 0; i < ChunkCount; i++)
            {
                await connection.Transport.Output.WriteAsync(payload.AsMemory(i * ChunkSize, ChunkSize)).AsTask().DefaultTimeout();
                int sent = i + 1;
                await Eventually.TrueAsync(() => dispatcher.ZeroCopySendsAwaitingNotification >= sent, $"send {sent}'s result");
            }

            // A graceful end: the FIN is queued after the data, the descriptor closed, the connection gone, while the
            // kernel still holds every page the peer has not acknowledged.
            await connection.Transport.Output.CompleteAsync();
            await closed.Task.DefaultTimeout();
            await harness.DisposeConnectionAsync(connection);
        }

        // The harness is disposed: the transport stopped, and with it the dispatcher and its ring.
        Assert.True(dispatcher.HasEnded);
        return (client, pool, dispatcher.ZeroCopySendsAwaitingNotification, dispatcher.ZeroCopySendsKeptAtTeardown);
    }

    /// <summary>
    /// The tracking pool, with a weak reference to every array it hands out. The tracking pool roots the arrays it
    /// gets back; an array collected was never given back, and nothing else held it.
    /// </summary>
    private sealed class WeakPool(TrackingMemoryPool inner) : MemoryPool<byte>
    {
        private readonly Lock _gate = new();
        private readonly List<WeakReference<byte[]>> _arrays = [];

        public TrackingMemoryPool Inner => inner;

        public override int MaxBufferSize => inner.MaxBufferSize;

        public int Collected
        {
            get
            {
                lock (_gate)
                {
                    return _arrays.Count(weak => !weak.TryGetTarget(out _));
                }
            }
        }

        public override IMemoryOwner<byte> Rent(int minBufferSize = -1)
        {
            IMemoryOwner<byte> owner = inner.Rent(minBufferSize);
            if (MemoryMarshal.TryGetArray<byte>(owner.Memory, out ArraySegment<byte> segment))
            {
                lock (_gate)
                {
                    _arrays.Add(new WeakReference<byte[]>(segment.Array!));
                }
            }

            return owner;
        }

        protected override void Dispose(bool disposing) => inner.Dispose();
    }
}
