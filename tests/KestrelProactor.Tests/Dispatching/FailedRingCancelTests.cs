using System.Net;
using KestrelProactor.Dispatching;
using KestrelProactor.IoUring;
using KestrelProactor.Tests.Infrastructure;
using Microsoft.AspNetCore.Connections;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace KestrelProactor.Tests.Dispatching;

/// <summary>
/// A ring that failed leaves nothing armed in the kernel when it closes. Found by the fault-injection runs
/// (tests/fault-injection/run.sh): after a dispatcher was killed, its multishot accept stayed armed until its thread
/// exited. Accept polls wake one waiter each, so a connection could wake that dead accept instead of the one the
/// moved listener armed on the surviving ring, and wait in the backlog with nobody to take it.
/// </summary>
[Collection(DispatcherHookCollection.Name)]
public sealed class FailedRingCancelTests
{
    [Fact]
    public async Task FailedRing_HasNoRequestArmedInTheKernel_WhenItCloses()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "io_uring");
        // Older kernels refuse the cancel-all (EINVAL): their rings' requests end with the ring's exit work.
        Assert.SkipUnless(KernelVersion.AtLeast(5, 19), "the kernel has no ASYNC_CANCEL ANY|ALL");
        ProactorTransportOptions options = TransportFactories.CreateOptions(TransportKind.Proactor);
        var factory = new ProactorTransportFactory(Options.Create(options), LoggerFactory.Create(_ => { }));
        IConnectionListener listener = await factory.BindAsync(new IPEndPoint(IPAddress.Loopback, 0)).DefaultTimeout();
        ProactorDispatcher[] dispatchers = factory.Backend!.Dispatchers;
        await DispatcherEndDrainTests.WaitUntilAsync(() => dispatchers.Count(d => d.ConnectionCount == 1) == 1);
        var accepting = (IoUringDispatcher)dispatchers.Single(d => d.ConnectionCount == 1);
        string? armed = null;
        try
        {
            ProactorDispatcher.TestLoopHook = d =>
            {
                if (ReferenceEquals(d, accepting))
                {
                    throw new InvalidOperationException("injected ring failure");
                }
            };
            ProactorDispatcher.TestTeardownHook = d =>
            {
                if (ReferenceEquals(d, accepting))
                {
                    // After the failure's salvage, before the ring closes: what the kernel still holds for it.
                    armed = ArmedRequests(accepting.Ring.RingFd.Fd);
                }
            };
            accepting.Schedule(static _ => { }, null);
            await accepting.Ended.DefaultTimeout();
        }
        finally
        {
            ProactorDispatcher.TestLoopHook = null;
            ProactorDispatcher.TestTeardownHook = null;
        }

        Assert.NotNull(armed);
        Assert.True(armed!.Length == 0, $"requests still armed in the failed ring when it closed: {armed}");
        await listener.DisposeAsync().DefaultTimeout();
        await factory.DisposeAsync().AsTask().DefaultTimeout();
    }

    [Fact]
    public async Task StoppedRingWithNoOwnerLeft_HasNoRequestArmedInTheKernel_WhenItCloses()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "io_uring");
        Assert.SkipUnless(KernelVersion.AtLeast(5, 19), "the kernel has no ASYNC_CANCEL ANY|ALL");
        // Arrange: a transport whose listener is gone, so its stop finds every table empty; only the wake-up read
        // (not an owner's, and freed right after the ring closes) is armed.
        ProactorTransportOptions options = TransportFactories.CreateOptions(TransportKind.Proactor);
        var factory = new ProactorTransportFactory(Options.Create(options), LoggerFactory.Create(_ => { }));
        IConnectionListener listener = await factory.BindAsync(new IPEndPoint(IPAddress.Loopback, 0)).DefaultTimeout();
        await listener.UnbindAsync().DefaultTimeout();
        await listener.DisposeAsync().DefaultTimeout();
        ProactorDispatcher[] dispatchers = factory.Backend!.Dispatchers;
        await DispatcherEndDrainTests.WaitUntilAsync(() => dispatchers.All(d => d.ConnectionCount == 0));
        var armed = new System.Collections.Concurrent.ConcurrentDictionary<int, string>();
        try
        {
            ProactorDispatcher.TestTeardownHook = d =>
            {
                if (dispatchers.Contains(d))
                {
                    armed[d.Id] = ArmedRequests(((IoUringDispatcher)d).Ring.RingFd.Fd);
                }
            };

            // Act
            await factory.DisposeAsync().AsTask().DefaultTimeout();
        }
        finally
        {
            ProactorDispatcher.TestTeardownHook = null;
        }

        // Assert: each ring cancelled its wake-up read before it closed.
        Assert.Equal(dispatchers.Length, armed.Count);
        Assert.All(armed, pair => Assert.True(pair.Value.Length == 0, $"dispatcher {pair.Key} still had requests armed when it closed: {pair.Value}"));
    }

    /// <summary>The ring's armed polls as the kernel lists them in the ring descriptor's fdinfo ("PollList:").</summary>
    private static string ArmedRequests(int ringFd)
    {
        string[] lines = File.ReadAllLines($"/proc/self/fdinfo/{ringFd}");
        int start = Array.FindIndex(lines, l => l.StartsWith("PollList:", StringComparison.Ordinal));
        Assert.True(start >= 0, "no PollList in the ring's fdinfo:\n" + string.Join("\n", lines));
        return string.Join(" ", lines.Skip(start + 1).TakeWhile(l => l.StartsWith(' ') || l.StartsWith('\t')).Select(l => l.Trim()));
    }
}
