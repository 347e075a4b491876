using System.IO.Pipelines;
using System.Net.Sockets;
using KestrelProactor.Dispatching;
using KestrelProactor.Internal;
using KestrelProactor.IoUring;
using KestrelProactor.Tests.Contract;
using KestrelProactor.Tests.Infrastructure;
using Microsoft.AspNetCore.Connections;

namespace KestrelProactor.Tests.Dispatching;

/// <summary>
/// A receive waiting in the dispatcher's queue for a ring buffer is not in the kernel, so a cancel sent there finds
/// nothing. A cancel asked for before or while it waits (back-pressure, the input's end) must still end it, or the
/// multishot receive goes out when a buffer is back and stays armed past the pause: the input then takes whatever the
/// peer sends, with nothing to stop it.
/// </summary>
[Collection(DispatcherHookCollection.Name)]
public sealed class ParkedReceiveCancelTests
{
    private const int BufferSize = 512;
    private const int MaxRead = 2 * BufferSize;
    private const int Chunks = 16;

    [Fact]
    public async Task APauseWhoseCancelMissedAParkedReceive_StillStopsItsNextReceive()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "io_uring");

        // Arrange: one dispatcher, a ring of four buffers; the input pauses at two buffers' worth. A connection whose
        // application does not read holds two buffers, lent to its input.
        await using ListenerHarness harness = await ListenerHarness.BindAsync(TransportKind.Proactor, configure: o =>
        {
            o.DispatcherCount = 1;
            o.ReceiveBufferCount = 4;
            o.ReceiveBufferSize = BufferSize;
            o.MaxReadBufferSize = MaxRead;
        });
        var dispatcher = (IoUringDispatcher)((ProactorTransportFactory)harness.Factory).Backend!.Dispatchers.Single();
        Assert.SkipUnless(dispatcher.FeaturesInUse.Contains("multishot-recv"), "a single-shot receive does not stay armed");
        (Socket holderClient, ConnectionContext holderContext) = await harness.ConnectAndAcceptAsync();
        (Socket client, ConnectionContext victimContext) = await harness.ConnectAndAcceptAsync();
        var holder = (ProactorConnection)holderContext;
        var victim = (ProactorConnection)victimContext;
        await RawClient.SendAllAsync(holderClient, new byte[2 * BufferSize]);
        await WaitUntilAsync(() => dispatcher.ReceiveBuffersLent == 2, "the holder never held two buffers");

        int victimBuffers = 0;
        int consumedAt = -1;
        bool pausedAndParked = false;
        using var release = new ManualResetEventSlim();
        var holding = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        dispatcher.Schedule(
            _ =>
            {
                dispatcher.BufferReceivedForTests = c =>
                {
                    if (ReferenceEquals(c, victim))
                    {
                        victimBuffers++;
                    }
                };
                holding.TrySetResult();
                release.Wait(TestTimeouts.Default);
            },
            null);
        await holding.Task.DefaultTimeout();
        try
        {
            // Act: while the dispatcher is held, the victim's peer sends three buffers' worth. In one batch, its
            // receive fills the last two buffers (the input pauses, a cancel is queued for the kernel) and then finds
            // the ring empty: the receive is parked, and the queued cancel will find nothing in the kernel.
            ProactorDispatcher.TestLoopHook = d =>
            {
                if (!ReferenceEquals(d, dispatcher) || consumedAt >= 0 || !victim.IsReceivePaused || dispatcher.QueuedReceivesForTests == 0)
                {
                    return;
                }

                // On the dispatcher, before the queue is served: both applications read everything, so the
                // buffers come back and the victim's input resumes while its receive is still parked.
                // The scenario: the pause's cancel was asked for before the receive was parked.
                pausedAndParked = victim.ReceiveCancelRequested;
                ConsumeAll(holder.Transport.Input);
                ConsumeAll(victim.Transport.Input);
                consumedAt = victimBuffers;
            };
            await RawClient.SendAllAsync(client, new byte[3 * BufferSize]);
            await Task.Delay(200);
            release.Set();
            await WaitUntilAsync(() => Volatile.Read(ref consumedAt) >= 0, () => "the victim never paused with its receive parked: " + dispatcher.DescribeReceiveState());
        }
        finally
        {
            release.Set();
            ProactorDispatcher.TestLoopHook = null;
        }

        // Then its peer sends sixteen buffers' worth, one buffer at a time, and nobody reads: the input pauses again at
        // two buffers, and its receive must stop soon after (the leftover third buffer of the first send, and what a
        // held-up dispatcher receives before the cancel lands: at most the ring's four).
        await WaitUntilAsync(() => !victim.IsReceivePaused, "the victim's input never resumed");
        int before = Volatile.Read(ref victimBuffers);
        for (int i = 0; i < Chunks; i++)
        {
            await RawClient.SendAllAsync(client, new byte[BufferSize]);
            await Task.Delay(20);
        }

        await Task.Delay(300);
        int taken = Volatile.Read(ref victimBuffers) - before;
        bool armed = await OnDispatcherAsync(dispatcher, () => victim.ReceiveActive);

        // Assert. Before the fix, the parked receive went out with the earlier cancel's flag still set: the second pause
        // sent no cancel, and the multishot receive took all sixteen buffers and stayed armed.
        Assert.True(pausedAndParked, "the receive was parked without the pause's cancel asked for");
        Assert.True(taken <= 4 && !armed, $"the input paused at {MaxRead} bytes, yet its receive took {taken} chunks and is {(armed ? "still armed" : "ended")}");

        // Nothing was lost: once the application reads, every byte arrives (the first send's third buffer, which had
        // waited in the socket, and the sixteen).
        byte[] rest = await ServerPipes.ReadExactlyAsync(victim.Transport.Input, (Chunks + 1) * BufferSize);
        Assert.Equal((Chunks + 1) * BufferSize, rest.Length);
    }

    [Fact]
    public async Task AnInputThatEndsWhileItsReceiveIsParked_EndsTheReceiveBeforeItGoesOut()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "io_uring");

        // Arrange: as above.
        await using ListenerHarness harness = await ListenerHarness.BindAsync(TransportKind.Proactor, configure: o =>
        {
            o.DispatcherCount = 1;
            o.ReceiveBufferCount = 4;
            o.ReceiveBufferSize = BufferSize;
            o.MaxReadBufferSize = MaxRead;
        });
        var dispatcher = (IoUringDispatcher)((ProactorTransportFactory)harness.Factory).Backend!.Dispatchers.Single();
        Assert.SkipUnless(dispatcher.FeaturesInUse.Contains("multishot-recv"), "a single-shot receive does not stay armed");
        (Socket holderClient, _) = await harness.ConnectAndAcceptAsync();
        (Socket client, ConnectionContext victimContext) = await harness.ConnectAndAcceptAsync();
        var victim = (ProactorConnection)victimContext;
        await RawClient.SendAllAsync(holderClient, new byte[2 * BufferSize]);
        await WaitUntilAsync(() => dispatcher.ReceiveBuffersLent == 2, () => "the holder never held two buffers: " + dispatcher.DescribeReceiveState());

        int victimBuffers = 0;
        int endedAt = -1;
        bool cancelAskedBeforeParking = false;
        using var release = new ManualResetEventSlim();
        var holding = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        dispatcher.Schedule(
            _ =>
            {
                dispatcher.BufferReceivedForTests = c =>
                {
                    if (ReferenceEquals(c, victim))
                    {
                        victimBuffers++;
                    }
                };
                holding.TrySetResult();
                release.Wait(TestTimeouts.Default);
            },
            null);
        await holding.Task.DefaultTimeout();
        try
        {
            // Act: as above, the victim's input pauses and its receive is parked in one batch; then, on the dispatcher
            // before the queue is served, its application completes the input instead of reading it (which ends the
            // pause, and the input).
            ProactorDispatcher.TestLoopHook = d =>
            {
                if (ReferenceEquals(d, dispatcher) && endedAt < 0 && victim.IsReceivePaused && dispatcher.QueuedReceivesForTests != 0)
                {
                    cancelAskedBeforeParking = victim.ReceiveCancelRequested;
                    victim.Transport.Input.Complete();
                    endedAt = victimBuffers;
                }
            };
            await RawClient.SendAllAsync(client, new byte[3 * BufferSize]);
            await Task.Delay(200);
            release.Set();
            await WaitUntilAsync(() => Volatile.Read(ref endedAt) >= 0, () => "the victim's receive was never parked: " + dispatcher.DescribeReceiveState());
        }
        finally
        {
            release.Set();
            ProactorDispatcher.TestLoopHook = null;
        }

        // Then the peer sends sixteen more buffers' worth.
        for (int i = 0; i < Chunks; i++)
        {
            await RawClient.SendAllAsync(client, new byte[BufferSize]);
            await Task.Delay(10);
        }

        await Task.Delay(300);
        int taken = Volatile.Read(ref victimBuffers) - endedAt;
        bool armed = await OnDispatcherAsync(dispatcher, () => victim.ReceiveActive);
        int inFlight = await OnDispatcherAsync(dispatcher, () => dispatcher.InFlightOf(victim));

        // Assert: the parked receive ended without going out, and its count in flight with it. Before, it went out once the pause was over, and stayed
        // armed past the input's end, filling buffers nobody reads.
        Assert.True(cancelAskedBeforeParking, "the receive was parked without the pause's cancel asked for");
        Assert.Equal(0, inFlight);
        Assert.True(!armed && taken == 0, $"the input ended while its receive was parked, yet the receive took {taken} buffers and is {(armed ? "still armed" : "ended")}");
    }

    private static bool ConsumeAll(PipeReader reader)
    {
        if (!reader.TryRead(out ReadResult result))
        {
            return false;
        }

        reader.AdvanceTo(result.Buffer.End);
        return true;
    }

    private static async Task<T> OnDispatcherAsync<T>(ProactorDispatcher dispatcher, Func<T> read)
    {
        var done = new TaskCompletionSource<T>(TaskCreationOptions.RunContinuationsAsynchronously);
        dispatcher.Schedule(_ => done.TrySetResult(read()), null);
        return await done.Task.DefaultTimeout();
    }

    private static Task WaitUntilAsync(Func<bool> condition, string because) => WaitUntilAsync(condition, () => because);

    private static async Task WaitUntilAsync(Func<bool> condition, Func<string> because)
    {
        using var timeout = new CancellationTokenSource(TestTimeouts.Default);
        while (!condition())
        {
            if (timeout.IsCancellationRequested)
            {
                Assert.Fail(because());
            }

            await Task.Delay(10);
        }
    }
}
