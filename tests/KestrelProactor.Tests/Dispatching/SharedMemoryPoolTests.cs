using System.Net;
using System.Net.Sockets;
using KestrelProactor.Dispatching;
using KestrelProactor.Internal;
using KestrelProactor.Tests.Contract;
using KestrelProactor.Tests.Infrastructure;
using Microsoft.AspNetCore.Connections;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Options;

namespace KestrelProactor.Tests.Dispatching;

/// <summary>
/// A <see cref="ProactorTransportOptions.MemoryPoolFactory"/> that returns one pool for every dispatcher: the pool is
/// the transport's, disposed exactly once, and only when no dispatcher of the transport uses it any more.
/// </summary>
[Collection(DispatcherHookCollection.Name)]
public sealed class SharedMemoryPoolTests
{
    [Fact]
    public async Task OnePoolForEveryDispatcher_OneDispatcherFails_ThePoolStaysUsableOnTheSurvivorAndIsDisposedOnceAtTheEnd()
    {
        var pool = new TrackingMemoryPool();
        ProactorTransportOptions options = TransportFactories.CreateOptions(TransportKind.Proactor, o => o.MemoryPoolFactory = () => pool);
        var factory = new ProactorTransportFactory(Options.Create(options), NullLoggerFactory.Instance);
        IConnectionListener listener = await factory.BindAsync(new IPEndPoint(IPAddress.Loopback, 0)).DefaultTimeout();
        ProactorDispatcher[] dispatchers = factory.Backend!.Dispatchers;
        Assert.Equal(2, dispatchers.Length);
        // The listener is an owner of one of them; the other holds nothing, so its end gives its pool back at once.
        await WaitUntilAsync(() => dispatchers.Count(d => d.ConnectionCount == 1) == 1);
        ProactorDispatcher idle = dispatchers.Single(d => d.ConnectionCount == 0);
        ProactorDispatcher survivor = dispatchers.Single(d => d.ConnectionCount == 1);
        try
        {
            ProactorDispatcher.TestLoopHook = d =>
            {
                if (ReferenceEquals(d, idle))
                {
                    throw new InvalidOperationException("injected ring failure");
                }
            };
            idle.Schedule(static _ => { }, null);
            await idle.Ended.DefaultTimeout();
        }
        finally
        {
            ProactorDispatcher.TestLoopHook = null;
        }

        Assert.True(idle.PoolReleased);
        Assert.False(survivor.HasEnded);
        Assert.Equal(0, pool.DisposeCount);

        using var client = new Socket(SocketType.Stream, ProtocolType.Tcp);
        await client.ConnectAsync(listener.EndPoint).DefaultTimeout();
        var connection = (ProactorConnection)(await listener.AcceptAsync().DefaultTimeout())!;
        Assert.Same(survivor, connection.Dispatcher);
        connection.Transport.Output.GetMemory(1);
        Assert.Equal(0, pool.RentedAfterDispose);

        connection.Abort(new ConnectionAbortedException("done"));
        await connection.DisposeAsync().AsTask().DefaultTimeout();
        await listener.UnbindAsync().DefaultTimeout();
        await listener.DisposeAsync().DefaultTimeout();
        await factory.DisposeAsync().AsTask().DefaultTimeout();

        Assert.Equal(1, pool.DisposeCount);
        Assert.Empty(pool.CollectErrors());
    }

    private static async Task WaitUntilAsync(Func<bool> condition)
    {
        using var deadline = new CancellationTokenSource(TestTimeouts.Default);
        while (!condition())
        {
            await Task.Delay(20, deadline.Token);
        }
    }
}
