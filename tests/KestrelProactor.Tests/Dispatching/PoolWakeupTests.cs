using System.Collections.Concurrent;
using System.Diagnostics.CodeAnalysis;
using System.Net.Sockets;
using KestrelProactor.Dispatching;
using KestrelProactor.Internal;
using KestrelProactor.Tests.Contract;
using KestrelProactor.Tests.Infrastructure;
using Microsoft.AspNetCore.Connections;

namespace KestrelProactor.Tests.Dispatching;

/// <summary>
/// A flush on a pool thread that finds its dispatcher asleep while the pool has other work queued leaves the wake-up to
/// a pool work item queued behind that work (ProactorDispatcher.Wakeups.cs): the flushes made meanwhile ride on it, a
/// dispatcher that woke for something else meanwhile costs it nothing, and no flush is left unsent. The hooks below
/// answer only for the dispatcher of the test that sets them; every other dispatcher in the process takes the real path.
/// </summary>
[Collection(DispatcherHookCollection.Name)]
public sealed class PoolWakeupTests
{
    [Fact]
    public async Task FlushesWhileAWakeupIsOwed_RideOnIt_AndAllGoOutWhenItIsPaid()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "io_uring");
        await using TwoConnections two = await TwoConnections.StartAsync();
        (Socket clientA, ConnectionContext a, Socket clientB, ConnectionContext b) = (two.ClientA, two.A, two.ClientB, two.B);
        (ProactorDispatcher dispatcher, HeldWakeups owed, long wakeups) = (two.Dispatcher, two.Owed, two.WakeupsBefore);

        // Act: two flushes on pool threads, 100 ms apart, while the pool counts as busy and its owed work item is
        // held by the test.
        await Task.Run(() => a.Transport.Output.WriteAsync("A"u8.ToArray()).AsTask()).DefaultTimeout();
        await Task.Delay(100);
        await Task.Run(() => b.Transport.Output.WriteAsync("B"u8.ToArray()).AsTask()).DefaultTimeout();
        await Task.Delay(100);

        // Assert: one wake-up owed for both, none sent, nothing sent yet (the dispatcher sleeps on).
        Assert.Equal(1, owed.Count);
        Assert.Equal(wakeups, dispatcher.Wakeups);
        Assert.Equal(0, clientA.Available + clientB.Available);

        // Once the pool runs the owed item: one wake-up, and both flushes go out.
        Assert.True(owed.TryDequeue(out Action? pay));
        await Task.Run(pay).DefaultTimeout();
        Assert.Equal("A"u8.ToArray(), await RawClient.ReceiveExactlyAsync(clientA, 1).DefaultTimeout());
        Assert.Equal("B"u8.ToArray(), await RawClient.ReceiveExactlyAsync(clientB, 1).DefaultTimeout());
        Assert.Equal(wakeups + 1, dispatcher.Wakeups);
    }

    [Fact]
    public async Task ADispatcherThatWokeForACompletionMeanwhile_OwesTheWakeupNothing()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "io_uring");
        await using TwoConnections two = await TwoConnections.StartAsync();
        (Socket clientA, ConnectionContext a, Socket clientB, ConnectionContext b) = (two.ClientA, two.A, two.ClientB, two.B);
        (ProactorDispatcher dispatcher, HeldWakeups owed, long wakeups) = (two.Dispatcher, two.Owed, two.WakeupsBefore);
        await Task.Run(() => a.Transport.Output.WriteAsync("A"u8.ToArray()).AsTask()).DefaultTimeout();
        Assert.Equal(1, owed.Count);

        // Act: B's peer sends a byte; its receive's completion wakes the dispatcher, which then sees A's flush too.
        await RawClient.SendAllAsync(clientB, "b"u8.ToArray());
        Assert.Equal("A"u8.ToArray(), await RawClient.ReceiveExactlyAsync(clientA, 1).DefaultTimeout());
        await ServerPipes.ReadExactlyAsync(b.Transport.Input, 1);
        await DispatcherHold.UntilSleepingAsync(dispatcher);

        // Assert: the owed item, run late, finds the debt dropped and sends no wake-up to the sleeping dispatcher.
        Assert.True(owed.TryDequeue(out Action? pay));
        await Task.Run(pay).DefaultTimeout();
        Assert.Equal(wakeups, dispatcher.Wakeups);
        Assert.True(dispatcher.IsSleepingForTests, "the owed wake-up woke a dispatcher that had already seen the flush");
    }

    [Fact]
    public async Task AFlushOnABusyPool_IsSentOnceTheRealPoolRunsTheOwedWakeup()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "io_uring");
        // No output coalescing: a held-back output read would take the flush without the output scheduler.
        await using ListenerHarness harness = await ListenerHarness.BindAsync(TransportKind.Proactor, configure: o =>
        {
            o.DispatcherCount = 1;
            o.OutputCoalescingDelay = TimeSpan.Zero;
        });
        (Socket client, ConnectionContext connection) = await harness.ConnectAndAcceptAsync();
        ProactorDispatcher dispatcher = ((ProactorConnection)connection).Dispatcher;
        using var busy = new HeldWakeups(dispatcher, holdOwedItems: false);
        // Act: the flushes owe their wake-ups, and the thread pool itself runs the owed work items.
        long owedBefore = dispatcher.WakeupsOwed;
        for (int i = 0; i < 20; i++)
        {
            await DispatcherHold.UntilSleepingAsync(dispatcher);
            await Task.Run(() => connection.Transport.Output.WriteAsync(new[] { (byte)i }).AsTask()).DefaultTimeout();
            Assert.Equal(new[] { (byte)i }, await RawClient.ReceiveExactlyAsync(client, 1).DefaultTimeout());
        }

        // Assert: each flush found the dispatcher asleep and owed its wake-up, and each was paid.
        Assert.Equal(owedBefore + 20, dispatcher.WakeupsOwed);
    }

    [Fact]
    public async Task AFlushFromAThreadOutsideThePool_WakesTheDispatcherAtOnce()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "io_uring");
        await using ListenerHarness harness = await ListenerHarness.BindAsync(TransportKind.Proactor, configure: o => o.DispatcherCount = 1);
        (Socket client, ConnectionContext connection) = await harness.ConnectAndAcceptAsync();
        ProactorDispatcher dispatcher = ((ProactorConnection)connection).Dispatcher;
        using var owed = new HeldWakeups(dispatcher);
        // Act: a thread of the application's own flushes while the pool counts as busy: no pool work item is
        // queued behind its work, so nothing could ride on an owed wake-up.
        await DispatcherHold.UntilSleepingAsync(dispatcher);
        var flushed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var thread = new Thread(() =>
        {
            try
            {
                connection.Transport.Output.WriteAsync("T"u8.ToArray()).AsTask().GetAwaiter().GetResult();
                flushed.TrySetResult();
            }
            catch (Exception ex)
            {
                flushed.TrySetException(ex);
            }
        });
        thread.Start();
        await flushed.Task.DefaultTimeout();

        // Assert
        Assert.Equal("T"u8.ToArray(), await RawClient.ReceiveExactlyAsync(client, 1).DefaultTimeout());
        Assert.Equal(0, owed.Count);
    }

    [Fact]
    public async Task InInlineMode_AFlushFromAPoolThreadWakesTheDispatcherAtOnce()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "io_uring");
        await using ListenerHarness harness = await ListenerHarness.BindAsync(TransportKind.ProactorInline, configure: o => o.DispatcherCount = 1);
        (Socket client, ConnectionContext connection) = await harness.ConnectAndAcceptAsync();
        ProactorDispatcher dispatcher = ((ProactorConnection)connection).Dispatcher;
        using var owed = new HeldWakeups(dispatcher);
        // Act: an application that offloads its work flushes from a pool thread, the pool counting as busy. In
        // inline mode the output's reader is the plain dispatcher: nothing may wait for a pool work item.
        await DispatcherHold.UntilSleepingAsync(dispatcher);
        await Task.Run(() => connection.Transport.Output.WriteAsync("I"u8.ToArray()).AsTask()).DefaultTimeout();

        // Assert
        Assert.Equal("I"u8.ToArray(), await RawClient.ReceiveExactlyAsync(client, 1).DefaultTimeout());
        Assert.Equal(0, owed.Count);
    }

    /// <summary>
    /// Two connections on one dispatcher, asleep, with its owed wake-ups held (<see cref="HeldWakeups"/>), and its count
    /// of wake-ups then.
    /// </summary>
    private sealed class TwoConnections : IAsyncDisposable
    {
        private ListenerHarness _harness = null!;

        public Socket ClientA { get; private set; } = null!;

        public ConnectionContext A { get; private set; } = null!;

        public Socket ClientB { get; private set; } = null!;

        public ConnectionContext B { get; private set; } = null!;

        public ProactorDispatcher Dispatcher { get; private set; } = null!;

        public HeldWakeups Owed { get; private set; } = null!;

        public long WakeupsBefore { get; private set; }

        public static async Task<TwoConnections> StartAsync()
        {
            var two = new TwoConnections { _harness = await ListenerHarness.BindAsync(TransportKind.Proactor, configure: o => o.DispatcherCount = 1) };
            try
            {
                (two.ClientA, two.A) = await two._harness.ConnectAndAcceptAsync();
                (two.ClientB, two.B) = await two._harness.ConnectAndAcceptAsync();
                two.Dispatcher = ((ProactorConnection)two.A).Dispatcher;
                two.Owed = new HeldWakeups(two.Dispatcher);
                await DispatcherHold.UntilSleepingAsync(two.Dispatcher);
                two.WakeupsBefore = two.Dispatcher.Wakeups;
                return two;
            }
            catch
            {
                await two.DisposeAsync();
                throw;
            }
        }

        public async ValueTask DisposeAsync()
        {
            // The hooks go (and what they held is paid) before the connections do.
            Owed?.Dispose();
            await _harness.DisposeAsync();
        }
    }

    /// <summary>
    /// For one dispatcher: the pool counts as busy, and (unless <c>holdOwedItems</c> is false) the owed wake-ups' work
    /// items are held here instead of queued on the pool. Disposing clears the hooks and pays whatever is still held,
    /// so the dispatcher is not left asleep with work queued.
    /// </summary>
    private sealed class HeldWakeups : IDisposable
    {
        private readonly ConcurrentQueue<Action> _owed = new();

        public HeldWakeups(ProactorDispatcher dispatcher, bool holdOwedItems = true)
        {
            ProactorDispatcher.TestPoolHasQueuedWork = d => ReferenceEquals(d, dispatcher) ? true : null;
            if (holdOwedItems)
            {
                ProactorDispatcher.TestQueueOwedWakeup = (d, pay) =>
                {
                    if (!ReferenceEquals(d, dispatcher))
                    {
                        return false;
                    }

                    _owed.Enqueue(pay);
                    return true;
                };
            }
        }

        public int Count => _owed.Count;

        public bool TryDequeue([NotNullWhen(true)] out Action? pay) => _owed.TryDequeue(out pay);

        public void Dispose()
        {
            ProactorDispatcher.TestPoolHasQueuedWork = null;
            ProactorDispatcher.TestQueueOwedWakeup = null;
            while (_owed.TryDequeue(out Action? pay))
            {
                pay();
            }
        }
    }
}
