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
        await exchange.RunAsync(waitForSpin: true);

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
        exchange.Dispatcher.HandOffSpinTicksForTests = Stopwatch.Frequency / 50; // 20 ms

        // Act 1: the reply comes well after the spin is over (a handler waiting on a back end).
        await exchange.RunAsync(waitForSpin: true, delayAfterSpin: TimeSpan.FromMilliseconds(500));
        Assert.Equal(exchange.SpinsBefore + 1, exchange.Dispatcher.HandOffSpins);
        Assert.Equal(exchange.CaughtBefore, exchange.Dispatcher.HandOffSpinsCaught);

        // Act 2: the next hand-off does not spin at all.
        long skipped = exchange.Dispatcher.HandOffSpinsSkipped;
        await exchange.RunAsync(waitForSpin: false);
        Assert.Equal(exchange.SpinsBefore, exchange.Dispatcher.HandOffSpins);
        Assert.Equal(skipped + 1, exchange.Dispatcher.HandOffSpinsSkipped);

        // Act 3: the one after it spins again, and catching the reply ends the back-off (act 4 spins at once).
        exchange.Dispatcher.HandOffSpinTicksForTests = (long)(TestTimeouts.Default.TotalSeconds * Stopwatch.Frequency);
        await exchange.RunAsync(waitForSpin: true);
        Assert.Equal(exchange.CaughtBefore + 1, exchange.Dispatcher.HandOffSpinsCaught);
        await exchange.RunAsync(waitForSpin: true);
        Assert.Equal(exchange.CaughtBefore + 1, exchange.Dispatcher.HandOffSpinsCaught);
        Assert.Equal(skipped + 1, exchange.Dispatcher.HandOffSpinsSkipped);
    }

    [Fact]
    public async Task WithOtherWorkQueuedOnThePool_TheDispatcherSleepsAtOnce()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "io_uring");
        await using Exchange exchange = await Exchange.StartAsync(TransportKind.Proactor, poolBusy: true);

        // Act: the same exchange while the pool counts as busy (the reply's flush owes its wake-up to the real pool).
        await exchange.RunAsync(waitForSpin: false);

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
        await exchange.RunAsync(waitForSpin: false);

        // Assert: no spin held the re-armed receive back.
        Assert.Equal(exchange.SpinsBefore, exchange.Dispatcher.HandOffSpins);
    }

    [Fact]
    public async Task AStopDuringASpin_EndsItAtOnce()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "io_uring");
        Exchange exchange = await Exchange.StartAsync(TransportKind.Proactor, poolBusy: false);
        try
        {
            // Arrange: a request handed off, and the dispatcher spinning for a reply that never comes (the spin is
            // stretched to the default time-out).
            Task spun = exchange.RunAsync(waitForSpin: true, reply: false);
            await spun.DefaultTimeout();
            Assert.Equal(exchange.SpinsBefore + 1, exchange.Dispatcher.HandOffSpins);
        }
        finally
        {
            // Act: the host stops meanwhile.
            var stopping = Stopwatch.StartNew();
            await exchange.DisposeAsync().AsTask().DefaultTimeout();

            // Assert: well within the stretched spin.
            Assert.True(stopping.Elapsed < TestTimeouts.Default / 3, $"the stop took {stopping.Elapsed}");
        }
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
        await exchange.RunAsync(waitForSpin: false);

        // Assert
        Assert.Equal(0, exchange.Dispatcher.HandOffSpins);
    }

    [Fact]
    public async Task WithTheSpinTimeZero_TheDispatcherNeverSpins()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "io_uring");
        await using Exchange exchange = await Exchange.StartAsync(TransportKind.Proactor, poolBusy: false, spinTime: TimeSpan.Zero);

        // Act
        await exchange.RunAsync(waitForSpin: false);

        // Assert: the option turns it off.
        Assert.Equal(0, exchange.Dispatcher.HandOffSpins);
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
        public async Task RunAsync(bool waitForSpin, TimeSpan delayAfterSpin = default, bool reply = true)
        {
            using var timeout = new CancellationTokenSource(TestTimeouts.Default);
            PipeReader input = Connection.Transport.Input;
            ValueTask<ReadResult> read = input.ReadAsync(timeout.Token);
            Assert.False(read.IsCompleted, "the request was read before it was sent");
            await WaitUntilSleepingAsync(Dispatcher, timeout.Token);
            SpinsBefore = Dispatcher.HandOffSpins;
            CaughtBefore = Dispatcher.HandOffSpinsCaught;
            WakeupsBefore = Dispatcher.Wakeups;

            await RawClient.SendAllAsync(Client, "q"u8.ToArray());
            ReadResult result = await read.AsTask().DefaultTimeout();
            Assert.Equal("q"u8.ToArray(), System.Buffers.BuffersExtensions.ToArray(result.Buffer));
            input.AdvanceTo(result.Buffer.End);
            while (waitForSpin && Dispatcher.HandOffSpins == SpinsBefore)
            {
                // The spin lasts the default time-out: the flush below lands in it, however late the pool ran this.
                await Task.Delay(1, timeout.Token);
            }

            await Task.Delay(delayAfterSpin, timeout.Token);
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

        private static async Task WaitUntilSleepingAsync(ProactorDispatcher dispatcher, CancellationToken cancellationToken)
        {
            while (!dispatcher.IsSleepingForTests)
            {
                await Task.Delay(5, cancellationToken);
            }

            // Asleep in the kernel, not only about to be: the flag is set just before the enter.
            await Task.Delay(20, cancellationToken);
        }
    }
}
