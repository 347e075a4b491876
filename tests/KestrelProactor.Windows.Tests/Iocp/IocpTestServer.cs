using KestrelProactor.Dispatching;
using KestrelProactor.Iocp;
using KestrelProactor.Tests.Contract;
using KestrelProactor.Tests.Infrastructure;

namespace KestrelProactor.Windows.Tests.Iocp;

/// <summary>Helpers for the IOCP-specific tests: the factory's dispatchers and a wait for a counter.</summary>
internal static class IocpTestServer
{
    public static IocpDispatcher[] Dispatchers(ListenerHarness harness)
    {
        var factory = Assert.IsType<ProactorTransportFactory>(harness.Factory);
        ProactorBackend backend = Assert.IsAssignableFrom<ProactorBackend>(factory.Backend);
        return backend.Dispatchers.Select(d => Assert.IsType<IocpDispatcher>(d)).ToArray();
    }

    public static async Task WaitUntilAsync(Func<bool> condition, string what)
    {
        DateTime deadline = DateTime.UtcNow + TestTimeouts.Default;
        while (!condition())
        {
            Assert.True(DateTime.UtcNow < deadline, $"Timed out waiting until {what}.");
            await Task.Delay(10);
        }
    }
}
