using System.IO.Pipelines;
using System.Net.Sockets;
using KestrelProactor.Tests.Contract;
using KestrelProactor.Tests.Infrastructure;
using Microsoft.AspNetCore.Connections;
using Microsoft.Extensions.Logging;

namespace KestrelProactor.Tests.Receive;

/// <summary>
/// The receive side's events, as the socket transport logs them (Debug, same event names; only the category
/// differs): read FIN, pause and resume under back-pressure, reset, and the error an application completes its
/// input with. Each test runs against the socket transport too.
/// </summary>
public sealed class ReceiveEventTests
{
    [Theory]
    [MemberData(nameof(TransportFactories.All), MemberType = typeof(TransportFactories))]
    public async Task PeerSendsFin_LogsConnectionReadFin(TransportKind kind)
    {
        var logs = new CapturingLoggerFactory();
        await using ListenerHarness harness = await ListenerHarness.BindAsync(kind, loggerFactory: logs);
        (Socket client, ConnectionContext connection) = await harness.ConnectAndAcceptAsync();

        client.Shutdown(SocketShutdown.Send);
        ReadResult result = await connection.Transport.Input.ReadAsync().AsTask().DefaultTimeout();

        Assert.True(result.IsCompleted);
        AssertLogged(logs, "ConnectionReadFin");
    }

    [Theory]
    [MemberData(nameof(TransportFactories.All), MemberType = typeof(TransportFactories))]
    public async Task BackPressure_LogsConnectionPauseThenConnectionResume(TransportKind kind)
    {
        const int Upload = 1024 * 1024;
        var logs = new CapturingLoggerFactory();
        await using ListenerHarness harness = await ListenerHarness.BindAsync(kind, configure: o => o.MaxReadBufferSize = 64 * 1024, loggerFactory: logs);
        (Socket client, ConnectionContext connection) = await harness.ConnectAndAcceptAsync();
        Task send = RawClient.SendAllAsync(client, RawClient.CreatePayload(Upload));

        // The application does not read until the transport has paused.
        await WaitUntilAsync(() => logs.Entries.Any(e => e.EventId.Name == "ConnectionPause"));
        long read = 0;
        while (read < Upload)
        {
            ReadResult result = await connection.Transport.Input.ReadAsync().AsTask().DefaultTimeout();
            read += result.Buffer.Length;
            connection.Transport.Input.AdvanceTo(result.Buffer.End);
        }

        await send.DefaultTimeout();
        CapturingLoggerFactory.LogEntry pause = AssertLogged(logs, "ConnectionPause");
        CapturingLoggerFactory.LogEntry resume = AssertLogged(logs, "ConnectionResume");
        Assert.True(logs.Entries.ToList().IndexOf(pause) < logs.Entries.ToList().IndexOf(resume), "Resume was logged before pause.");
    }

    [Theory]
    [MemberData(nameof(TransportFactories.All), MemberType = typeof(TransportFactories))]
    public async Task PeerResets_LogsConnectionReset(TransportKind kind)
    {
        Assert.SkipWhen(TestHost.IsWine, TestHost.WineResetBeforeReceive);
        var logs = new CapturingLoggerFactory();
        await using ListenerHarness harness = await ListenerHarness.BindAsync(kind, loggerFactory: logs);
        (Socket client, ConnectionContext connection) = await harness.ConnectAndAcceptAsync();
        Task<ReadResult> read = connection.Transport.Input.ReadAsync().AsTask();

        RawClient.Reset(client);

        await Assert.ThrowsAsync<ConnectionResetException>(() => read.DefaultTimeout());
        AssertLogged(logs, "ConnectionReset");
    }

    [Theory]
    [MemberData(nameof(TransportFactories.All), MemberType = typeof(TransportFactories))]
    public async Task ApplicationCompletesInputWithException_LogsConnectionErrorAndFiresConnectionClosed(TransportKind kind)
    {
        // The socket transport's next flush throws the exception: it logs a connection error at Debug, ends its
        // receive loop and fires ConnectionClosed. The lending input used to drop the exception (nothing logged,
        // nothing fired), and the copying one logged a transport fault at Error.
        var logs = new CapturingLoggerFactory();
        await using ListenerHarness harness = await ListenerHarness.BindAsync(kind, loggerFactory: logs);
        (Socket client, ConnectionContext connection) = await harness.ConnectAndAcceptAsync();
        var closed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        using CancellationTokenRegistration registration = connection.ConnectionClosed.Register(() => closed.TrySetResult());

        await connection.Transport.Input.CompleteAsync(new InvalidOperationException("The application failed."));
        await RawClient.SendAllAsync(client, new byte[] { 1 });

        await closed.Task.DefaultTimeout();
        AssertLogged(logs, "ConnectionError");
        Assert.DoesNotContain(logs.Entries, e => e.Level > LogLevel.Debug && e.EventId.Name != "BackendStarted");
    }

    internal static CapturingLoggerFactory.LogEntry AssertLogged(CapturingLoggerFactory logs, string eventName)
    {
        foreach (CapturingLoggerFactory.LogEntry entry in logs.Entries)
        {
            TestContext.Current.TestOutputHelper?.WriteLine(entry.ToString());
        }

        CapturingLoggerFactory.LogEntry? logged = logs.Entries.FirstOrDefault(e => e.EventId.Name == eventName);
        Assert.True(logged is not null, $"No {eventName} event was logged.");
        Assert.Equal(LogLevel.Debug, logged.Level);
        return logged;
    }

    internal static async Task WaitUntilAsync(Func<bool> condition)
    {
        DateTime deadline = DateTime.UtcNow + TestTimeouts.Default;
        while (!condition())
        {
            Assert.True(DateTime.UtcNow < deadline, "The condition was not met in time.");
            await Task.Delay(10, TestContext.Current.CancellationToken);
        }
    }
}
