using System.Net.Sockets;
using KestrelProactor.Dispatching;
using KestrelProactor.Internal;
using KestrelProactor.IoUring;
using KestrelProactor.Tests.Contract;
using KestrelProactor.Tests.Infrastructure;
using KestrelProactor.Tests.Interop;
using Microsoft.AspNetCore.Connections;

namespace KestrelProactor.Tests.Dispatching;

/// <summary>
/// A ring that fails while zero-copy sends wait for their notifications. The notifications the kernel posts before
/// the ring closes say it let go of the pages: their memory goes back to the pool, as after a stop. Found by the
/// fault-injection runs with zero-copy sends: the failed ring read such notifications and ignored them, so every
/// pool block those sends held was kept for good (22 blocks in one seed).
/// </summary>
[Collection(DispatcherHookCollection.Name)]
public sealed class ZeroCopyFailureTests
{
    private const int ChunkSize = 16 * 1024;
    private const int ChunkCount = 4;

    [Fact]
    public async Task RingFailsWithNotificationsPosted_SendsAreNotKept_AndEveryPoolBlockComesBack()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "io_uring");
        byte[] payload = RawClient.CreatePayload(ChunkSize * ChunkCount, seed: 43);
        var pool = new TrackingMemoryPool();
        using var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { ReceiveBufferSize = 4096 };
        IoUringDispatcher dispatcher;
        int awaiting;
        var received = new List<byte>();
        string? hookProblem = null;
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
            SocketDescriptor.SetSendBufferSize(((ProactorConnection)connection).Socket, 1024 * 1024);

            // Arrange: every chunk's result arrived; the peer has read nothing, so no notification has.
            for (int i = 0; i < ChunkCount; i++)
            {
                await connection.Transport.Output.WriteAsync(payload.AsMemory(i * ChunkSize, ChunkSize)).AsTask().DefaultTimeout();
                int sent = i + 1;
                await Eventually.TrueAsync(() => dispatcher.ZeroCopySendsAwaitingNotification >= sent, $"send {sent}'s result");
            }

            awaiting = dispatcher.ZeroCopySendsAwaitingNotification;

            // Act: on the dispatcher's thread, the peer reads everything (so the kernel is done with every page and
            // queues the notifications), then the ring fails before the dispatcher has read any of them.
            try
            {
                ProactorDispatcher.TestLoopHook = d =>
                {
                    if (!ReferenceEquals(d, dispatcher))
                    {
                        return;
                    }

                    ProactorDispatcher.TestLoopHook = null;
                    hookProblem = DrainPayload(client, payload.Length, received);
                    throw new InvalidOperationException("injected ring failure");
                };
                dispatcher.Schedule(static _ => { }, null);
                await Eventually.TrueAsync(() => dispatcher.HasEnded, "the dispatcher's end");
                await dispatcher.Ended.DefaultTimeout();
            }
            finally
            {
                ProactorDispatcher.TestLoopHook = null;
            }

            await harness.DisposeConnectionAsync(connection);
        }

        // Assert: the notifications came while the failed ring ended, so nothing was kept for the kernel, and
        // every block the sends held went back once the connection was released.
        Assert.Null(hookProblem);
        Assert.True(awaiting > 0, "no zero-copy send waited for its notification");
        Assert.Equal(RawClient.Hash(payload), RawClient.Hash(received.ToArray()));
        Assert.True(dispatcher.HasFailed, "the dispatcher did not fail");
        Assert.Equal(0, dispatcher.ZeroCopySendsKeptAtTeardown);
        await Eventually.TrueAsync(() => pool.Outstanding == 0, $"every pool block back ({pool.Outstanding} out)");
        Assert.Empty(pool.CollectErrors());
    }

    /// <summary>Dispatcher thread: reads the whole payload.</summary>
    private static string? DrainPayload(Socket client, int length, List<byte> received)
    {
        client.ReceiveTimeout = 10_000;
        byte[] buffer = new byte[16 * 1024];
        while (received.Count < length)
        {
            int n = client.Receive(buffer);
            if (n == 0)
            {
                return $"end of stream after {received.Count} bytes";
            }

            received.AddRange(buffer.AsSpan(0, n).ToArray());
        }

        // The peer's reads acknowledged the bytes: the kernel freed them and queued the notifications, which the
        // ring (deferred task work) posts at its next enter, the failed ring's own. The pause only makes that likelier
        // on a loaded machine; the failed ring waits a bounded time for what is still to come.
        Thread.Sleep(50);
        return null;
    }
}
