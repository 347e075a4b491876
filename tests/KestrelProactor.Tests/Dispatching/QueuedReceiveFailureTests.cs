using System.IO.Pipelines;
using System.Net.Sockets;
using KestrelProactor.Dispatching;
using KestrelProactor.Internal;
using KestrelProactor.IoUring;
using KestrelProactor.Tests.Infrastructure;

namespace KestrelProactor.Tests.Dispatching;

/// <summary>
/// A ring without DEFER_TASKRUN (one with a polling thread) fails while a receive waits in the queue for a ring
/// buffer: that receive never reached the kernel again, so its connection is released as done, not kept as maybe-live
/// with its output's memory.
/// </summary>
[Collection(PollingCollection.Name)]
public sealed class QueuedReceiveFailureTests
{
    [Fact]
    public async Task LoopFailsWhileAReceiveWaitsForABuffer_NothingIsKeptForTheKernel()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "io_uring");
        await using var server = await DispatcherEndDrainTests.Server.StartAsync(TransportKind.ProactorPolling, o =>
        {
            o.DispatcherCount = 1;
            o.ReceiveBufferCount = 2;
            o.ReceiveBufferSize = 512;
        });
        var dispatcher = (IoUringDispatcher)((ProactorTransportFactory)server.Factory).Backend!.Dispatchers.Single();
        Assert.SkipUnless(dispatcher.Ring.PollsSubmissions, "the kernel refused SQPOLL");

        // A connection whose application does not read holds one of the two buffers, lent to its input.
        using var holder = new Socket(SocketType.Stream, ProtocolType.Tcp);
        using var filler = new Socket(SocketType.Stream, ProtocolType.Tcp);
        using var client = new Socket(SocketType.Stream, ProtocolType.Tcp);
        await server.ConnectAsync(holder);
        await holder.SendAsync(new byte[512], SocketFlags.None).DefaultTimeout();
        await DispatcherEndDrainTests.WaitUntilAsync(() => dispatcher.ReceiveBuffersLent == 1);
        await server.ConnectAsync(filler);

        // The target: its peer reads nothing, so a send stays in the kernel.
        client.ReceiveBufferSize = 4096;
        ProactorConnection target = await server.ConnectAsync(client);
        Task<FlushResult> flush = await DispatcherEndDrainTests.WriteUntilSendStaysInKernelAsync(target.Transport.Output);

        // While the dispatcher is held, the filler's bytes take the last buffer (the polling thread receives them) and
        // the target's byte finds the ring empty; once it goes on, the target's receive waits in the queue, and the
        // loop fails at the start of the next pass, before the queue is served.
        bool failedWithQueued = false;
        using DispatcherHold hold = await DispatcherHold.HoldAsync(dispatcher);
        try
        {
            ProactorDispatcher.TestLoopHook = d =>
            {
                if (ReferenceEquals(d, dispatcher) && dispatcher.QueuedReceivesForTests != 0)
                {
                    failedWithQueued = true;
                    throw new InvalidOperationException("injected ring failure");
                }
            };
            await filler.SendAsync(new byte[512], SocketFlags.None).DefaultTimeout();
            await Task.Delay(200);
            await client.SendAsync(new byte[1], SocketFlags.None).DefaultTimeout();
            await Task.Delay(200);
            hold.Release();
            await dispatcher.Ended.DefaultTimeout();
        }
        finally
        {
            hold.Release();
            ProactorDispatcher.TestLoopHook = null;
        }

        // Assert: the loop failed with the target's receive queued, and nothing of the target's was kept for the
        // kernel. Before, the queued receive stayed counted in flight, so the target was released as maybe-live and
        // its output's blocks (its send had been active) were kept out of the pool for good.
        Assert.True(failedWithQueued, "the loop did not fail with a receive queued");
        Assert.False(target.MemoryKeptForKernelForTests, "the target's memory was kept for the kernel");
        await Task.WhenAny(flush, Task.Delay(TestTimeouts.Default));
        Assert.True(flush.IsCompleted, "the application's flush never completed");
        await target.DisposeAsync().AsTask().DefaultTimeout();
    }
}
