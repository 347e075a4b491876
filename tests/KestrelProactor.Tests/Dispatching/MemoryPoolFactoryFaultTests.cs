using System.Net;
using KestrelProactor.Tests.Contract;
using KestrelProactor.Tests.Infrastructure;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Options;

namespace KestrelProactor.Tests.Dispatching;

/// <summary>
/// A memory-pool factory that throws while the transport starts (one pool per dispatcher): the start fails, and the
/// pools the factory had already handed out are disposed, not left to nobody.
/// </summary>
public sealed class MemoryPoolFactoryFaultTests
{
    [Fact]
    public async Task FactoryThrowsForTheSecondDispatcher_StartFails_TheFirstPoolIsDisposed()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux() || OperatingSystem.IsWindows(), "a native backend");
        var first = new TrackingMemoryPool();
        int calls = 0;
        ProactorTransportOptions options = TransportFactories.CreateOptions(TransportKind.Proactor, o =>
        {
            o.DispatcherCount = 2;
            o.AllowSocketTransportFallback = false;
            o.MemoryPoolFactory = () => Interlocked.Increment(ref calls) == 1
                ? first
                : throw new InvalidOperationException("injected memory-pool factory failure");
        });
        var factory = new ProactorTransportFactory(Options.Create(options), NullLoggerFactory.Instance);
        try
        {
            // Act
            ProactorUnavailableException failure = await Assert.ThrowsAsync<ProactorUnavailableException>(
                () => factory.BindAsync(new IPEndPoint(IPAddress.Loopback, 0)).AsTask().DefaultTimeout());

            // Assert: the start failed on the factory's throw, and the pool handed out before it was disposed once.
            Assert.Equal(2, calls);
            Assert.IsType<InvalidOperationException>(failure.InnerException);
            Assert.Equal(1, first.DisposeCount);
        }
        finally
        {
            await factory.DisposeAsync().AsTask().DefaultTimeout();
        }

        Assert.Equal(1, first.DisposeCount);
    }
}
