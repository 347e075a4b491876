using System.IO.Pipelines;
using System.Net.Sockets;
using KestrelProactor.Dispatching;
using KestrelProactor.Internal;
using KestrelProactor.Tests.Contract;
using KestrelProactor.Tests.Infrastructure;
using Microsoft.AspNetCore.Connections;
using Microsoft.Extensions.Logging;

namespace KestrelProactor.Tests.Receive;

/// <summary>
/// Receive errors end the input as the socket transport ends it: a reset or a broken pipe with
/// ConnectionResetException (logged ConnectionReset), anything else with the socket error itself (logged
/// ConnectionError), both at Debug. A loopback peer can produce a reset but not the others, so those are made by
/// replacing the result of a real receive of one connection (<see cref="ProactorConnection.TestReceiveResultHook"/>).
/// </summary>
[Collection(ReceiveHookCollection.Name)]
public sealed class ReceiveErrorTests
{
    public static TheoryData<TransportKind> ProactorKinds => new(TransportFactories.Kinds.Where(k => k != TransportKind.Sockets));

    [Theory]
    [MemberData(nameof(ProactorKinds))]
    public async Task ReceiveFails_TimedOut_InputEndsWithTheSocketErrorLoggedAsConnectionError(TransportKind kind)
    {
        var logs = new CapturingLoggerFactory();
        Exception error = await ReceiveFailingWithAsync(kind, logs, SocketError.TimedOut, 110, "ETIMEDOUT");

        // Not a reset: the socket transport completes its input with the SocketException itself.
        var socketError = Assert.IsType<SocketException>(error);
        Assert.Equal(SocketError.TimedOut, socketError.SocketErrorCode);
        ReceiveEventTests.AssertLogged(logs, "ConnectionError");
        Assert.DoesNotContain(logs.Entries, e => e.EventId.Name == "ConnectionReset");
        Assert.DoesNotContain(logs.Entries, e => e.Level > LogLevel.Debug && e.EventId.Name != "BackendStarted");
    }

    [Theory]
    [MemberData(nameof(ProactorKinds))]
    public async Task ReceiveFails_BrokenPipe_InputEndsWithConnectionResetLoggedAsConnectionReset(TransportKind kind)
    {
        var logs = new CapturingLoggerFactory();
        Exception error = await ReceiveFailingWithAsync(kind, logs, SocketError.Shutdown, 32, "EPIPE");

        Assert.IsType<ConnectionResetException>(error);
        ReceiveEventTests.AssertLogged(logs, "ConnectionReset");
        Assert.DoesNotContain(logs.Entries, e => e.EventId.Name == "ConnectionError");
    }

    private static async Task<Exception> ReceiveFailingWithAsync(TransportKind kind, CapturingLoggerFactory logs, SocketError socketError, int errno, string name)
    {
        await using ListenerHarness harness = await ListenerHarness.BindAsync(kind, loggerFactory: logs);
        (Socket client, ConnectionContext connection) = await harness.ConnectAndAcceptAsync();
        var target = (ProactorConnection)connection;
        ProactorConnection.TestReceiveResultHook = (c, result) => c == target && result.IsSuccess && result.Value > 0
            ? IoResult.Failure(socketError, errno, name)
            : result;
        try
        {
            Task<ReadResult> read = connection.Transport.Input.ReadAsync().AsTask();
            await RawClient.SendAllAsync(client, new byte[] { 1, 2, 3 });
            return await Assert.ThrowsAnyAsync<Exception>(() => read.DefaultTimeout());
        }
        finally
        {
            ProactorConnection.TestReceiveResultHook = null;
        }
    }
}

/// <summary>Tests that set <see cref="ProactorConnection.TestReceiveResultHook"/> (one at a time; it is static).</summary>
[CollectionDefinition(Name)]
public sealed class ReceiveHookCollection
{
    public const string Name = "Receive result hook";
}
