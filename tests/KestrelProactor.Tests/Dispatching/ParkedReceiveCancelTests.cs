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
        await using Scenario scenario = await Scenario.StartAsync();
        ProactorConnection victim = scenario.Victim;

        // Act: the victim's input pauses and its receive is parked in one batch; then, on the dispatcher before the
        // queue is served, both applications read everything, so the buffers come back and the victim's input resumes
        // while its receive is still parked.
        (bool cancelAskedBeforeParking, _) = await scenario.PauseAndParkAsync(() =>
        {
            ConsumeAll(scenario.Holder.Transport.Input);
            ConsumeAll(victim.Transport.Input);
        });

        // Then its peer sends sixteen buffers' worth, one buffer at a time, and nobody reads: the input pauses again at
        // two buffers, and its receive must stop soon after (the leftover third buffer of the first send, and what a
        // held-up dispatcher receives before the cancel lands: at most the ring's four).
        await WaitUntilAsync(() => !victim.IsReceivePaused, "the victim's input never resumed");
        int before = scenario.VictimBuffers;
        await scenario.SendChunksAsync(pauseMilliseconds: 20);
        int taken = scenario.VictimBuffers - before;
        bool armed = await OnDispatcherAsync(scenario.Dispatcher, () => victim.ReceiveActive);

        // Assert. Before the fix, the parked receive went out with the earlier cancel's flag still set: the second pause
        // sent no cancel, and the multishot receive took all sixteen buffers and stayed armed.
        Assert.True(cancelAskedBeforeParking, "the receive was parked without the pause's cancel asked for");
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
        await using Scenario scenario = await Scenario.StartAsync();
        ProactorConnection victim = scenario.Victim;

        // Act: as above, but its application completes the input instead of reading it (which ends the pause, and
        // the input); then the peer sends sixteen more buffers' worth.
        (bool cancelAskedBeforeParking, int endedAt) = await scenario.PauseAndParkAsync(() => victim.Transport.Input.Complete());
        await scenario.SendChunksAsync(pauseMilliseconds: 10);
        int taken = scenario.VictimBuffers - endedAt;
        bool armed = await OnDispatcherAsync(scenario.Dispatcher, () => victim.ReceiveActive);
        int inFlight = await OnDispatcherAsync(scenario.Dispatcher, () => scenario.Dispatcher.InFlightOf(victim));

        // Assert: the parked receive ended without going out, and its count in flight with it. Before, it went out
        // once the pause was over, and stayed armed past the input's end, filling buffers nobody reads.
        Assert.True(cancelAskedBeforeParking, "the receive was parked without the pause's cancel asked for");
        Assert.True(!armed && taken == 0, $"the input ended while its receive was parked, yet the receive took {taken} buffers and is {(armed ? "still armed" : "ended")}");
        Assert.Equal(0, inFlight);
    }

    /// <summary>
    /// One dispatcher, a ring of four buffers, inputs that pause at two buffers' worth; a connection whose application
    /// does not read holds two buffers, lent to its input; the victim's buffer deliveries are counted.
    /// </summary>
    private sealed class Scenario : IAsyncDisposable
    {
        private int _victimBuffers;

        private Scenario(ListenerHarness harness, IoUringDispatcher dispatcher, ProactorConnection holder, ProactorConnection victim, Socket client)
        {
            Harness = harness;
            Dispatcher = dispatcher;
            Holder = holder;
            Victim = victim;
            Client = client;
        }

        public ListenerHarness Harness { get; }

        public IoUringDispatcher Dispatcher { get; }

        public ProactorConnection Holder { get; }

        public ProactorConnection Victim { get; }

        public Socket Client { get; }

        public int VictimBuffers => Volatile.Read(ref _victimBuffers);

        public static async Task<Scenario> StartAsync()
        {
            ListenerHarness harness = await ListenerHarness.BindAsync(TransportKind.Proactor, configure: o =>
            {
                o.DispatcherCount = 1;
                o.ReceiveBufferCount = 4;
                o.ReceiveBufferSize = BufferSize;
                o.MaxReadBufferSize = MaxRead;
            });
            try
            {
                var dispatcher = (IoUringDispatcher)((ProactorTransportFactory)harness.Factory).Backend!.Dispatchers.Single();
                Assert.SkipUnless(dispatcher.FeaturesInUse.Contains("multishot-recv"), "a single-shot receive does not stay armed");
                (Socket holderClient, ConnectionContext holder) = await harness.ConnectAndAcceptAsync();
                (Socket client, ConnectionContext victim) = await harness.ConnectAndAcceptAsync();
                var scenario = new Scenario(harness, dispatcher, (ProactorConnection)holder, (ProactorConnection)victim, client);
                await RawClient.SendAllAsync(holderClient, new byte[2 * BufferSize]);
                await WaitUntilAsync(() => dispatcher.ReceiveBuffersLent == 2, () => "the holder never held two buffers: " + dispatcher.DescribeReceiveState());
                return scenario;
            }
            catch
            {
                await harness.DisposeAsync();
                throw;
            }
        }

        /// <summary>
        /// While the dispatcher is held, the victim's peer sends three buffers' worth. In one batch, its receive fills
        /// the last two buffers (the input pauses, a cancel is queued for the kernel) and then finds the ring empty: the
        /// receive is parked, and the queued cancel will find nothing in the kernel. <paramref name="onParked"/> then
        /// runs on the dispatcher, before the queue is served.
        /// </summary>
        /// <returns>Whether the pause's cancel had been asked for when the receive was parked, and the victim's buffer count then.</returns>
        public async Task<(bool CancelAskedBeforeParking, int BuffersThen)> PauseAndParkAsync(Action onParked)
        {
            int buffersThen = -1;
            bool cancelAsked = false;
            using (await DispatcherHold.HoldAsync(Dispatcher, () => Dispatcher.BufferReceivedForTests = c =>
            {
                if (ReferenceEquals(c, Victim))
                {
                    _victimBuffers++;
                }
            }))
            {
                try
                {
                    ProactorDispatcher.TestLoopHook = d =>
                    {
                        if (ReferenceEquals(d, Dispatcher) && buffersThen < 0 && Victim.IsReceivePaused && Dispatcher.QueuedReceivesForTests != 0)
                        {
                            cancelAsked = Victim.ReceiveCancelRequested;
                            onParked();
                            buffersThen = _victimBuffers;
                        }
                    };
                    await RawClient.SendAllAsync(Client, new byte[3 * BufferSize]);
                    await Task.Delay(200);
                }
                catch
                {
                    ProactorDispatcher.TestLoopHook = null;
                    throw;
                }
            }

            try
            {
                await WaitUntilAsync(() => Volatile.Read(ref buffersThen) >= 0, () => "the victim never paused with its receive parked: " + Dispatcher.DescribeReceiveState());
            }
            finally
            {
                ProactorDispatcher.TestLoopHook = null;
            }

            return (cancelAsked, buffersThen);
        }

        /// <summary>The victim's peer sends sixteen buffers' worth, one at a time; then the dispatcher has 300 ms to settle.</summary>
        public async Task SendChunksAsync(int pauseMilliseconds)
        {
            for (int i = 0; i < Chunks; i++)
            {
                await RawClient.SendAllAsync(Client, new byte[BufferSize]);
                await Task.Delay(pauseMilliseconds);
            }

            await Task.Delay(300);
        }

        public ValueTask DisposeAsync() => Harness.DisposeAsync();
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
