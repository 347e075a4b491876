using System.Diagnostics;
using System.IO.Pipelines;
using System.Net.Sockets;
using KestrelProactor.Dispatching;
using KestrelProactor.Internal;
using KestrelProactor.Tests.Contract;
using KestrelProactor.Tests.Infrastructure;
using Microsoft.AspNetCore.Connections;

namespace KestrelProactor.Tests.Dispatching;

/// <summary>
/// After a pass that handed one request to an idle thread pool, the dispatcher looks for the response for
/// <see cref="ProactorTransportOptions.HandOffSpinTime"/> before it sleeps, so the response's flush needs no wake-up
/// (ProactorDispatcher.Wakeups.cs). The spin is stretched here to the default time-out, so that whether the flush is
/// caught does not depend on how fast the pool runs the reader; the pool hook answers only for the test's dispatcher.
/// </summary>
[Collection(DispatcherHookCollection.Name)]
public sealed class HandOffSpinTests
{
    [Fact]
    public async Task AResponseFlushedWhileTheDispatcherSpins_GoesOutWithoutAWakeup()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "io_uring");
        await using Exchange exchange = await Exchange.StartAsync(TransportKind.Proactor, poolBusy: false);

        // Act: the reader, woken on a pool thread, flushes its reply once the dispatcher has begun to spin.
        await exchange.RunAsync(wait: Wait.ForSpin);

        // Assert: one spin, which caught the flush; no wake-up was sent.
        Assert.Equal(exchange.SpinsBefore + 1, exchange.Dispatcher.HandOffSpins);
        Assert.Equal(exchange.CaughtBefore + 1, exchange.Dispatcher.HandOffSpinsCaught);
        Assert.Equal(exchange.WakeupsBefore, exchange.Dispatcher.Wakeups);
    }

    [Fact]
    public async Task ASpinThatEndsWithoutTheResponse_MakesTheNextChanceBeSkipped_AndACaughtOneStartsOver()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "io_uring");
        await using Exchange exchange = await Exchange.StartAsync(TransportKind.Proactor, poolBusy: false);
        ProactorDispatcher dispatcher = exchange.Dispatcher;
        long skipped = dispatcher.HandOffSpinsSkipped;

        // Act 1: a 20 ms spin, and the reply well after it (a handler waiting on a back end): a miss.
        await exchange.MissAsync();
        Assert.Equal(exchange.CaughtBefore, dispatcher.HandOffSpinsCaught);

        // Act 2: the next hand-off does not spin (one chance skipped).
        await exchange.RunAsync(wait: Wait.ForSkip);
        Assert.Equal(exchange.SpinsBefore, dispatcher.HandOffSpins);
        Assert.Equal(skipped + 1, dispatcher.HandOffSpinsSkipped);

        // Act 3: the one after it spins again, and catches the reply.
        await exchange.RunAsync(wait: Wait.ForSpin);
        Assert.Equal(exchange.CaughtBefore + 1, dispatcher.HandOffSpinsCaught);

        // Act 4: the catch started the back-off over: after another miss, one chance is skipped (not three) and the
        // next one spins.
        await exchange.MissAsync();
        await exchange.RunAsync(wait: Wait.ForSkip);
        Assert.Equal(skipped + 2, dispatcher.HandOffSpinsSkipped);
        await exchange.RunAsync(wait: Wait.ForSpin);
        Assert.Equal(exchange.CaughtBefore + 1, dispatcher.HandOffSpinsCaught);
        Assert.Equal(skipped + 2, dispatcher.HandOffSpinsSkipped);
    }

    [Fact]
    public async Task WithOtherWorkQueuedOnThePool_TheDispatcherSleepsAtOnce()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "io_uring");
        await using Exchange exchange = await Exchange.StartAsync(TransportKind.Proactor, poolBusy: true);

        // Act: the same exchange while the pool counts as busy (the reply's flush owes its wake-up to the real pool).
        await exchange.RunAsync();

        // Assert: the core was left to the pool's work.
        Assert.Equal(exchange.SpinsBefore, exchange.Dispatcher.HandOffSpins);
    }

    [Fact]
    public async Task WithKernelWorkPreparedInThePass_TheDispatcherDoesNotHoldItBackToSpin()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "io_uring");
        // Single-shot receives: the request's completion re-arms the receive in the same pass that hands it off, and
        // that submission waits for the next enter.
        await using Exchange exchange = await Exchange.StartAsync(TransportKind.ProactorSingleShot, poolBusy: false);

        // Act
        long declined = exchange.Dispatcher.HandOffSpinsDeclinedForKernelWork;
        await exchange.RunAsync(wait: Wait.ForDecline);

        // Assert: no spin held the re-armed receive back.
        Assert.Equal(exchange.SpinsBefore, exchange.Dispatcher.HandOffSpins);
        Assert.Equal(declined + 1, exchange.Dispatcher.HandOffSpinsDeclinedForKernelWork);
    }

    [Fact]
    public async Task AStopDuringASpin_EndsItAtOnce()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "io_uring");
        await using Exchange exchange = await Exchange.StartAsync(TransportKind.Proactor, poolBusy: false);
        // Arrange: a request handed off, and the dispatcher spinning for a reply that never comes, for longer than the
        // default time-out.
        exchange.Dispatcher.HandOffSpinTicksForTests = (long)(2 * TestTimeouts.Default.TotalSeconds * Stopwatch.Frequency);
        await exchange.RunAsync(wait: Wait.ForSpin, reply: false);

        var closed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        using CancellationTokenRegistration registration = exchange.Connection.ConnectionClosed.Register(() => closed.TrySetResult());

        // Act: the dispatcher is stopped (its stop only sets a flag and writes its wake-up, which a spin does not read).
        var stopping = Stopwatch.StartNew();
        Task stop = exchange.Dispatcher.StopAsync();

        // Assert: the spin saw the flag, and the loop went on to abort the connection.
        await closed.Task.DefaultTimeout();
        Assert.True(stopping.Elapsed < TestTimeouts.Default / 3, $"the connection was aborted {stopping.Elapsed} after the stop");
        await exchange.Connection.DisposeAsync();
        await stop.DefaultTimeout();
    }

    [Theory]
    [InlineData(50)]
    [InlineData(1000)]
    public async Task TheSpinTimeFromTheOptions_IsWhatTheDispatcherSpins(int microseconds)
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "io_uring");
        await using Exchange exchange = await Exchange.StartAsync(TransportKind.Proactor, poolBusy: false, spinTime: TimeSpan.FromMicroseconds(microseconds));

        // Assert: the dispatcher's own spin time (the other tests stretch it), in timestamp ticks.
        Assert.Equal(microseconds * Stopwatch.Frequency / 1_000_000, exchange.Dispatcher.HandOffSpinTicks);
    }

    [Fact]
    public async Task InInlineMode_TheDispatcherNeverSpins()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "io_uring");
        await using Exchange exchange = await Exchange.StartAsync(TransportKind.ProactorInline, poolBusy: false);

        // Act: the reader runs on the dispatcher itself, so no response is waited for on another thread.
        await exchange.RunAsync();

        // Assert
        Assert.Equal(0, exchange.Dispatcher.HandOffSpins);
    }

    [Fact]
    public async Task WithTheSpinTimeZero_TheDispatcherNeverSpins()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "io_uring");
        await using Exchange exchange = await Exchange.StartAsync(TransportKind.Proactor, poolBusy: false, spinTime: TimeSpan.Zero);

        // Act
        await exchange.RunAsync();

        // Assert: the option turns it off.
        Assert.Equal(0, exchange.Dispatcher.HandOffSpins);
    }

    /// <summary>What the exchange waits for the dispatcher to do with the hand-off before it replies.</summary>
    private enum Wait
    {
        None,
        ForSpin,
        ForSkip,
        ForDecline,
    }

    /// <summary>
    /// One connection on one dispatcher, whose reader waits for a request and answers it: "q" in, "r" out. The spin
    /// is as long as the default time-out (where the options allow it at all).
    /// </summary>
    private sealed class Exchange : IAsyncDisposable
    {
        private ListenerHarness _harness = null!;

        public Socket Client { get; private set; } = null!;

        public ConnectionContext Connection { get; private set; } = null!;

        public ProactorDispatcher Dispatcher { get; private set; } = null!;

        public long SpinsBefore { get; private set; }

        public long CaughtBefore { get; private set; }

        public long WakeupsBefore { get; private set; }

        public static async Task<Exchange> StartAsync(TransportKind kind, bool poolBusy, TimeSpan? spinTime = null)
        {
            var exchange = new Exchange
            {
                _harness = await ListenerHarness.BindAsync(kind, configure: o =>
                {
                    o.DispatcherCount = 1;
                    o.OutputCoalescingDelay = TimeSpan.Zero;
                    o.HandOffSpinTime = spinTime ?? TimeSpan.FromMicroseconds(50);
                }),
            };
            try
            {
                (exchange.Client, exchange.Connection) = await exchange._harness.ConnectAndAcceptAsync();
                exchange.Dispatcher = ((ProactorConnection)exchange.Connection).Dispatcher;
                exchange.Dispatcher.HandOffSpinTicksForTests = (long)(TestTimeouts.Default.TotalSeconds * Stopwatch.Frequency);
                ProactorDispatcher dispatcher = exchange.Dispatcher;
                ProactorDispatcher.TestPoolHasQueuedWork = d => ReferenceEquals(d, dispatcher) ? poolBusy : null;
                return exchange;
            }
            catch
            {
                await exchange.DisposeAsync();
                throw;
            }
        }

        /// <summary>
        /// Starts the read before the request comes, so the request's receive completes it (and wakes the reader on
        /// the pool, or inline); answers it, and waits for the answer at the client.
        /// </summary>
        /// <summary>A 20 ms spin, and the reply half a second after it began: a spin that ends without the response.</summary>
        public async Task MissAsync()
        {
            Dispatcher.HandOffSpinTicksForTests = Stopwatch.Frequency / 50;
            await RunAsync(wait: Wait.ForSpin, delayAfterWait: TimeSpan.FromMilliseconds(500));
            Assert.Equal(SpinsBefore + 1, Dispatcher.HandOffSpins);
            Dispatcher.HandOffSpinTicksForTests = (long)(TestTimeouts.Default.TotalSeconds * Stopwatch.Frequency);
        }

        public async Task RunAsync(Wait wait = Wait.None, TimeSpan delayAfterWait = default, bool reply = true)
        {
            using var timeout = new CancellationTokenSource(TestTimeouts.Default);
            PipeReader input = Connection.Transport.Input;
            ValueTask<ReadResult> read = input.ReadAsync(timeout.Token);
            Assert.False(read.IsCompleted, "the request was read before it was sent");
            await DispatcherHold.UntilSleepingAsync(Dispatcher, timeout.Token);
            SpinsBefore = Dispatcher.HandOffSpins;
            CaughtBefore = Dispatcher.HandOffSpinsCaught;
            WakeupsBefore = Dispatcher.Wakeups;
            long skippedBefore = Dispatcher.HandOffSpinsSkipped;
            long declinedBefore = Dispatcher.HandOffSpinsDeclinedForKernelWork;

            await RawClient.SendAllAsync(Client, "q"u8.ToArray());
            ReadResult result = await read.AsTask().DefaultTimeout();
            Assert.Equal("q"u8.ToArray(), System.Buffers.BuffersExtensions.ToArray(result.Buffer));
            input.AdvanceTo(result.Buffer.End);
            // Before the reply, the dispatcher's choice for this hand-off is made: the flush below then cannot race it
            // (a spin lasts the default time-out: the flush lands in it, however late the pool ran this).
            Func<bool> decided = wait switch
            {
                Wait.ForSpin => () => Dispatcher.HandOffSpins != SpinsBefore,
                Wait.ForSkip => () => Dispatcher.HandOffSpinsSkipped != skippedBefore,
                Wait.ForDecline => () => Dispatcher.HandOffSpinsDeclinedForKernelWork != declinedBefore,
                _ => () => true,
            };
            while (!decided())
            {
                await Task.Delay(1, timeout.Token);
            }

            await Task.Delay(delayAfterWait, timeout.Token);
            if (!reply)
            {
                return;
            }


            await Connection.Transport.Output.WriteAsync("r"u8.ToArray(), timeout.Token);
            Assert.Equal("r"u8.ToArray(), await RawClient.ReceiveExactlyAsync(Client, 1).DefaultTimeout());
        }

        public async ValueTask DisposeAsync()
        {
            ProactorDispatcher.TestPoolHasQueuedWork = null;
            await _harness.DisposeAsync();
        }
    }
}
