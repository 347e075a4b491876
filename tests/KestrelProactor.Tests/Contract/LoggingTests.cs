using System.IO.Pipelines;
using System.Net.Sockets;
using KestrelProactor.Tests.Infrastructure;
using Microsoft.AspNetCore.Connections;
using Microsoft.Extensions.Logging;

namespace KestrelProactor.Tests.Contract;

/// <summary>
/// Contract: what a client does to its own connection (reset it, stop reading, get aborted) is routine for a server
/// and is logged at Debug; Warning and Error are for the transport's own failures.
/// </summary>
public sealed class LoggingTests
{
    [Theory]
    // Over TCP only: a Unix socket has no RST (the peer's abortive close reads as end-of-stream, with either transport).
    [MemberData(nameof(TransportMatrix.Presets), MemberType = typeof(TransportMatrix))]
    public async Task Input_PeerResets_LogsNothingAboveDebug(TransportKind kind)
    {
        Assert.SkipWhen(TestHost.IsWine, TestHost.WineResetBeforeReceive);
        // Arrange
        var logs = new CapturingLoggerFactory();
        ListenerHarness harness = await ListenerHarness.BindAsync(kind, loggerFactory: logs);
        await using (harness)
        {
            (Socket client, ConnectionContext connection) = await harness.ConnectAndAcceptAsync();
            Task<ReadResult> pendingRead = connection.Transport.Input.ReadAsync(TestContext.Current.CancellationToken).AsTask();

            // Act
            RawClient.Reset(client);
            await Assert.ThrowsAsync<ConnectionResetException>(() => pendingRead.DefaultTimeout());
            await harness.DisposeAsync();
        }

        // Assert
        WriteEntries(logs);
        // The one Information line at start (BackendStarted) is about the transport, not this connection.
        Assert.DoesNotContain(logs.Entries, entry => entry.Level > LogLevel.Debug && entry.EventId.Name != "BackendStarted");
    }

    [Theory]
    [MemberData(nameof(TransportMatrix.All), MemberType = typeof(TransportMatrix))]
    public async Task Abort_WhileLargeSendIsBlocked_LogsNothingAboveDebug(TransportKind kind, TransportEndpoint endpoint)
    {
        // Arrange
        var logs = new CapturingLoggerFactory();
        ListenerHarness harness = await ListenerHarness.BindAsync(kind, endpoint, loggerFactory: logs);
        await using (harness)
        {
            (_, ConnectionContext connection) = await harness.ConnectAndAcceptAsync();
            Task<FlushResult> write = connection.Transport.Output.WriteAsync(RawClient.CreatePayload(8 * 1024 * 1024), TestContext.Current.CancellationToken).AsTask();
            await Task.Delay(300, TestContext.Current.CancellationToken);

            // Act
            connection.Abort(new ConnectionAbortedException("The test aborted a blocked send."));
            await write.EndsWithinDefaultTimeout();
            await harness.DisposeAsync();
        }

        // Assert
        WriteEntries(logs);
        // The one Information line at start (BackendStarted) is about the transport, not this connection.
        Assert.DoesNotContain(logs.Entries, entry => entry.Level > LogLevel.Debug && entry.EventId.Name != "BackendStarted");
    }

    private static void WriteEntries(CapturingLoggerFactory logs)
    {
        foreach (CapturingLoggerFactory.LogEntry entry in logs.Entries)
        {
            TestContext.Current.TestOutputHelper?.WriteLine(entry.ToString());
        }
    }
}
