using System.IO.Pipelines;
using System.Net.Sockets;
using KestrelProactor.Internal;
using KestrelProactor.Tests.Infrastructure;
using Microsoft.AspNetCore.Connections;
using Microsoft.Extensions.Logging;

namespace KestrelProactor.Tests.Contract;

/// <summary>
/// Contract: how a connection ends, as Kestrel's socket transport ends it, on the wire and in the log. <c>Abort(null)</c>
/// is Kestrel saying the client closed gracefully: FIN. <c>Abort(reason)</c> is RST, or FIN with FIN-on-error. A send
/// that meets the peer's reset ends the input with <see cref="ConnectionResetException"/>. An application that completes
/// its output with an exception ends its connection with a connection error, logged at Debug. The events
/// (ConnectionWriteFin, ConnectionWriteRst, ConnectionReset, ConnectionError) are matched by name, whatever the category,
/// so each test checks itself against the socket transport.
/// </summary>
public sealed class AbortParityTests
{
    [Theory]
    [MemberData(nameof(TransportFactories.All), MemberType = typeof(TransportFactories))]
    public async Task Abort_WithoutReason_ClientReadsEndOfStreamAndWriteFinIsLogged(TransportKind kind)
    {
        // Arrange
        var logs = new CapturingLoggerFactory();
        await using ListenerHarness harness = await ListenerHarness.BindAsync(kind, loggerFactory: logs);
        (Socket client, ConnectionContext connection) = await harness.ConnectAndAcceptAsync();
        Task closed = ServerPipes.WhenClosedAsync(connection);
        await connection.Transport.Output.WriteAsync("before abort"u8.ToArray(), TestContext.Current.CancellationToken).DefaultTimeout();
        Assert.Equal("before abort"u8.ToArray(), await RawClient.ReceiveExactlyAsync(client, 12));

        // Act: what Kestrel's HTTP/1.1 and HTTP/2 connections do when the client closed gracefully.
        connection.Abort(null!);

        // Assert: end-of-stream (ReceiveToEndAsync throws on RST).
        Assert.Empty(await RawClient.ReceiveToEndAsync(client));
        await closed.DefaultTimeout();
        WriteEntries(logs);
        Assert.Contains(logs.Entries, e => e.EventId.Name == "ConnectionWriteFin" && e.Level == LogLevel.Debug);
        Assert.DoesNotContain(logs.Entries, e => e.EventId.Name == "ConnectionWriteRst");
    }

    [Theory]
    [MemberData(nameof(ContractTransports.KindsAndBooleans), MemberType = typeof(ContractTransports))]
    public async Task Abort_WithReason_SendsRstOrWithFinOnErrorFin_AndLogsWhichWithTheReason(TransportKind kind, bool finOnError)
    {
        Assert.SkipWhen(TestHost.IsWine && !finOnError, TestHost.WineResetBeforeReceive);
        // Arrange
        const string Reason = "The test aborted the connection.";
        var logs = new CapturingLoggerFactory();
        await using ListenerHarness harness = await ListenerHarness.BindAsync(kind, configure: o => o.FinOnError = finOnError, loggerFactory: logs);
        (Socket client, ConnectionContext connection) = await harness.ConnectAndAcceptAsync();
        Task closed = ServerPipes.WhenClosedAsync(connection);
        await connection.Transport.Output.WriteAsync("before abort"u8.ToArray(), TestContext.Current.CancellationToken).DefaultTimeout();
        Assert.Equal("before abort"u8.ToArray(), await RawClient.ReceiveExactlyAsync(client, 12));

        // Act
        connection.Abort(new ConnectionAbortedException(Reason));
        Exception? clientError = await Record.ExceptionAsync(() => RawClient.ReceiveToEndAsync(client));

        // Assert
        await closed.DefaultTimeout();
        WriteEntries(logs);
        string expected = finOnError ? "ConnectionWriteFin" : "ConnectionWriteRst";
        string unexpected = finOnError ? "ConnectionWriteRst" : "ConnectionWriteFin";
        Assert.Contains(logs.Entries, e => e.EventId.Name == expected && e.Level == LogLevel.Debug && e.Message.Contains(Reason, StringComparison.Ordinal));
        Assert.DoesNotContain(logs.Entries, e => e.EventId.Name == unexpected);
        if (finOnError)
        {
            Assert.Null(clientError);
        }
        else
        {
            Assert.Equal(SocketError.ConnectionReset, Assert.IsType<SocketException>(clientError).SocketErrorCode);
        }
    }

    [Theory]
    [MemberData(nameof(TransportFactories.All), MemberType = typeof(TransportFactories))]
    public async Task Send_PeerResetWhileInputIsPaused_InputEndsWithConnectionResetException(TransportKind kind)
    {
        // Arrange: the input holds more than MaxReadBufferSize, so no receive is armed and only a send can see the
        // peer's reset.
        var logs = new CapturingLoggerFactory();
        await using ListenerHarness harness = await ListenerHarness.BindAsync(kind, configure: o => o.MaxReadBufferSize = 64 * 1024, loggerFactory: logs);
        (Socket client, ConnectionContext connection) = await harness.ConnectAndAcceptAsync();
        await RawClient.SendAllAsync(client, RawClient.CreatePayload(192 * 1024));
        await WaitUntilAsync(() => IsReceivePaused(connection, logs), "the transport to pause receiving");

        // Act: the client resets; the server writes until the output reports the end (a flush that completes).
        RawClient.Reset(client);
        byte[] chunk = new byte[4096];
        FlushResult flush = default;
        for (int i = 0; i < 100_000 && !flush.IsCompleted; i++)
        {
            try
            {
                flush = await connection.Transport.Output.WriteAsync(chunk, TestContext.Current.CancellationToken).DefaultTimeout();
            }
            catch (Exception ex) when (ex is ConnectionResetException or ConnectionAbortedException or IOException or InvalidOperationException)
            {
                // A transport may also end the application's writes with an error.
                break;
            }
        }

        // Assert: however many buffered bytes the input still hands out, it ends with the reset.
        await Assert.ThrowsAsync<ConnectionResetException>(() => ServerPipes.ReadToEndAsync(connection.Transport.Input));
        WriteEntries(logs);
        Assert.Contains(logs.Entries, e => e.EventId.Name == "ConnectionReset" && e.Level == LogLevel.Debug);
        Assert.DoesNotContain(logs.Entries, e => e.Level > LogLevel.Debug && e.EventId.Name != "BackendStarted");
    }

    [Theory]
    [MemberData(nameof(TransportFactories.All), MemberType = typeof(TransportFactories))]
    public async Task Output_ApplicationCompletesWithException_IsAConnectionErrorAtDebugNotATransportFault(TransportKind kind)
    {
        // Arrange
        var logs = new CapturingLoggerFactory();
        await using ListenerHarness harness = await ListenerHarness.BindAsync(kind, loggerFactory: logs);
        (Socket client, ConnectionContext connection) = await harness.ConnectAndAcceptAsync();
        Task closed = ServerPipes.WhenClosedAsync(connection);
        var failure = new InvalidOperationException("The connection handler failed.");

        // Act: what a connection handler may do to end its connection.
        await connection.Transport.Output.CompleteAsync(failure).DefaultTimeout();
        Exception? clientError = await Record.ExceptionAsync(() => RawClient.ReceiveToEndAsync(client));

        // Assert: the input ends with the application's error; the connection is aborted (RST, as without FinOnError).
        Exception inputError = await Assert.ThrowsAnyAsync<Exception>(() => ServerPipes.ReadToEndAsync(connection.Transport.Input));
        Assert.Same(failure, inputError);
        await closed.DefaultTimeout();
        if (!TestHost.IsWine)
        {
            Assert.Equal(SocketError.ConnectionReset, Assert.IsType<SocketException>(clientError).SocketErrorCode);
        }

        WriteEntries(logs);
        Assert.Contains(logs.Entries, e => e.EventId.Name == "ConnectionError" && e.Level == LogLevel.Debug && ReferenceEquals(e.Exception, failure));
        Assert.DoesNotContain(logs.Entries, e => e.Level > LogLevel.Debug && e.EventId.Name != "BackendStarted");
        if (harness.Factory is ProactorTransportFactory factory)
        {
            Assert.Equal(0, factory.Backend!.Dispatchers.Sum(d => d.HandlerFaults));
        }
    }

    /// <summary>Whether receiving is paused: the socket transport logs it; the proactor's connection says so, and has no receive armed.</summary>
    private static bool IsReceivePaused(ConnectionContext connection, CapturingLoggerFactory logs)
        => connection is ProactorConnection proactor
            ? proactor.IsReceivePaused && !proactor.ReceiveActive
            : logs.Entries.Any(e => e.EventId.Name == "ConnectionPause");

    private static async Task WaitUntilAsync(Func<bool> condition, string what)
    {
        long deadline = Environment.TickCount64 + (long)TestTimeouts.Default.TotalMilliseconds;
        while (!condition())
        {
            Assert.True(Environment.TickCount64 < deadline, $"Timed out waiting for {what}.");
            await Task.Delay(10, TestContext.Current.CancellationToken);
        }
    }

    private static void WriteEntries(CapturingLoggerFactory logs)
    {
        foreach (CapturingLoggerFactory.LogEntry entry in logs.Entries)
        {
            TestContext.Current.TestOutputHelper?.WriteLine(entry.ToString());
        }
    }
}
