using System.Net;
using KestrelProactor.Dispatching;
using KestrelProactor.Tests.Infrastructure;
using Microsoft.AspNetCore.Connections;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace KestrelProactor.Tests.Dispatching;

/// <summary>
/// The listener moving off a failed dispatcher: an unbind that comes while it moves stops it on its new dispatcher,
/// and a dispatcher whose teardown failed (its accept may still be armed) lets nobody else accept in its place.
/// </summary>
[Collection(DispatcherHookCollection.Name)]
public sealed class ListenerMoveTests
{
    private const int ListenerMovedEventId = 42;

    [Fact]
    public async Task UnbindWhileTheListenerMoves_StopsItOnItsNewDispatcher_WhichEndsWithNoOwner()
    {
        IConnectionListener? listener = null;
        Task? unbind = null;
        // Logged after the new dispatcher is published and before the listener's start is queued there: the gap.
        using var loggerFactory = LoggerFactory.Create(b => b.AddProvider(new HookProvider(ListenerMovedEventId, () => unbind = listener!.UnbindAsync().AsTask())));
        ProactorTransportOptions options = TransportFactories.CreateOptions(TransportKind.Proactor);
        var factory = new ProactorTransportFactory(Options.Create(options), loggerFactory);
        listener = await factory.BindAsync(new IPEndPoint(IPAddress.Loopback, 0)).DefaultTimeout();
        ProactorDispatcher[] dispatchers = factory.Backend!.Dispatchers;
        await DispatcherEndDrainTests.WaitUntilAsync(() => dispatchers.Count(d => d.ConnectionCount == 1) == 1);
        ProactorDispatcher accepting = dispatchers.Single(d => d.ConnectionCount == 1);
        ProactorDispatcher survivor = dispatchers.Single(d => d.ConnectionCount == 0);
        await FailAsync(accepting, failTeardown: false);

        await DispatcherEndDrainTests.WaitUntilAsync(() => unbind is not null);
        await unbind!.DefaultTimeout();
        // Queued after the listener's start on the survivor: once it runs, the start has run too.
        var passed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        survivor.Schedule(static state => ((TaskCompletionSource)state!).SetResult(), passed);
        await passed.Task.DefaultTimeout();
        Assert.Equal(0, survivor.ConnectionCount);
        Assert.False(survivor.HasEnded);
        await listener.DisposeAsync().DefaultTimeout();
        await factory.DisposeAsync().AsTask().DefaultTimeout();
    }

    [Fact]
    public async Task AcceptingDispatchersTeardownFails_TheListenerDoesNotMove_AcceptSeesTheFailure()
    {
        ProactorTransportOptions options = TransportFactories.CreateOptions(TransportKind.Proactor);
        var factory = new ProactorTransportFactory(Options.Create(options), LoggerFactory.Create(_ => { }));
        IConnectionListener listener = await factory.BindAsync(new IPEndPoint(IPAddress.Loopback, 0)).DefaultTimeout();
        ProactorDispatcher[] dispatchers = factory.Backend!.Dispatchers;
        await DispatcherEndDrainTests.WaitUntilAsync(() => dispatchers.Count(d => d.ConnectionCount == 1) == 1);
        ProactorDispatcher accepting = dispatchers.Single(d => d.ConnectionCount == 1);
        await FailAsync(accepting, failTeardown: true);

        // Its accept may still be armed in the queue that did not close: accepting elsewhere too would race it.
        await Assert.ThrowsAsync<IOException>(async () => await listener.AcceptAsync().DefaultTimeout());
        await listener.DisposeAsync().DefaultTimeout();
        await factory.DisposeAsync().AsTask().DefaultTimeout();
    }

    private static async Task FailAsync(ProactorDispatcher target, bool failTeardown)
    {
        try
        {
            ProactorDispatcher.TestLoopHook = d =>
            {
                if (ReferenceEquals(d, target))
                {
                    throw new InvalidOperationException("injected ring failure");
                }
            };
            if (failTeardown)
            {
                ProactorDispatcher.TestTeardownHook = d =>
                {
                    if (ReferenceEquals(d, target))
                    {
                        throw new InvalidOperationException("injected teardown failure");
                    }
                };
            }

            target.Schedule(static _ => { }, null);
            await target.Ended.DefaultTimeout();
        }
        finally
        {
            ProactorDispatcher.TestLoopHook = null;
            ProactorDispatcher.TestTeardownHook = null;
        }
    }

    /// <summary>Runs an action, once, when an event with the given id is logged.</summary>
    private sealed class HookProvider(int eventId, Action action) : ILoggerProvider, ILogger
    {
        private int _fired;

        public ILogger CreateLogger(string categoryName) => this;

        public IDisposable? BeginScope<TState>(TState state)
            where TState : notnull => null;

        public bool IsEnabled(LogLevel logLevel) => true;

        public void Log<TState>(LogLevel logLevel, EventId id, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
        {
            if (id.Id == eventId && Interlocked.Exchange(ref _fired, 1) == 0)
            {
                action();
            }
        }

        public void Dispose()
        {
        }
    }
}
