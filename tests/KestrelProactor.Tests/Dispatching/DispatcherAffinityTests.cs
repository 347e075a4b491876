using System.Net.Sockets;
using KestrelProactor.IoUring;
using KestrelProactor.Tests.Contract;
using KestrelProactor.Tests.Infrastructure;
using Microsoft.AspNetCore.Connections;

namespace KestrelProactor.Tests.Dispatching;

/// <summary>
/// <see cref="ProactorTransportOptions.DispatcherAffinity"/>: dispatcher n runs on the n-th CPU the process may use.
/// Checked from the kernel's side (each dispatcher thread's <c>Cpus_allowed_list</c> in /proc), not from what the
/// dispatcher says of itself.
/// </summary>
public sealed class DispatcherAffinityTests
{
    [Fact]
    public async Task DispatcherAffinity_On_EachDispatcherThreadIsPinnedToItsOwnCpu_AndServes()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "io_uring is Linux only.");
        IReadOnlyList<int> processCpus = ThreadCpus.Of("/proc/self/status");
        Assert.SkipWhen(processCpus.Count < 2, "The process may use one CPU only: pinned and unpinned look the same.");

        // Arrange
        var logs = new CapturingLoggerFactory();
        await using ListenerHarness harness = await ListenerHarness.BindAsync(TransportKind.Proactor, loggerFactory: logs, configure: o =>
        {
            o.DispatcherAffinity = true;
            o.DispatcherCount = processCpus.Count + 1; // one more than the CPUs: the last wraps round to the first
        });
        IoUringDispatcher[] dispatchers = ((ProactorTransportFactory)harness.Factory).Backend!.Dispatchers.OfType<IoUringDispatcher>().ToArray();

        // Act
        (Socket client, ConnectionContext connection) = await harness.ConnectAndAcceptAsync();
        Task echo = ServerPipes.EchoAsync(connection);
        byte[] payload = RawClient.CreatePayload(256 * 1024, seed: 3);
        byte[] echoed = await RawClient.ExchangeAsync(client, payload);
        await echo.DefaultTimeout();

        // Assert
        Assert.Equal(processCpus.Count + 1, dispatchers.Length);
        foreach (IoUringDispatcher dispatcher in dispatchers)
        {
            int expected = processCpus[dispatcher.Id % processCpus.Count];
            Assert.Equal([expected], ThreadCpus.Of($"/proc/self/task/{dispatcher.NativeThreadId}/status"));
            Assert.Equal(expected, dispatcher.PinnedCpu);
        }

        Assert.Equal(dispatchers.Length, logs.Entries.Count(e => e.EventId.Name == "DispatcherPinned"));
        Assert.DoesNotContain(logs.Entries, e => e.EventId.Name == "DispatcherAffinityFailed");
        Assert.Equal(RawClient.Hash(payload), RawClient.Hash(echoed));
    }

    [Fact]
    public async Task DispatcherAffinity_Off_DispatcherThreadsMayUseEveryCpuOfTheProcess()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "io_uring is Linux only.");
        IReadOnlyList<int> processCpus = ThreadCpus.Of("/proc/self/status");

        // Arrange
        var logs = new CapturingLoggerFactory();
        await using ListenerHarness harness = await ListenerHarness.BindAsync(TransportKind.Proactor, loggerFactory: logs);
        IoUringDispatcher[] dispatchers = ((ProactorTransportFactory)harness.Factory).Backend!.Dispatchers.OfType<IoUringDispatcher>().ToArray();

        // Assert
        Assert.NotEmpty(dispatchers);
        foreach (IoUringDispatcher dispatcher in dispatchers)
        {
            Assert.Equal(processCpus, ThreadCpus.Of($"/proc/self/task/{dispatcher.NativeThreadId}/status"));
            Assert.Equal(-1, dispatcher.PinnedCpu);
        }

        Assert.DoesNotContain(logs.Entries, e => e.EventId.Name == "DispatcherPinned");
    }

    /// <summary>The <c>Cpus_allowed_list</c> line of a /proc status file ("0-3,6"), expanded.</summary>
    private static class ThreadCpus
    {
        public static IReadOnlyList<int> Of(string statusPath)
        {
            string line = File.ReadLines(statusPath).Single(l => l.StartsWith("Cpus_allowed_list:", StringComparison.Ordinal));
            var cpus = new List<int>();
            foreach (string part in line["Cpus_allowed_list:".Length..].Trim().Split(',', StringSplitOptions.RemoveEmptyEntries))
            {
                string[] range = part.Split('-');
                int first = int.Parse(range[0]);
                int last = range.Length == 2 ? int.Parse(range[1]) : first;
                for (int cpu = first; cpu <= last; cpu++)
                {
                    cpus.Add(cpu);
                }
            }

            return cpus;
        }
    }
}
