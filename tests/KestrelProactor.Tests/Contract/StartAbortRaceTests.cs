using System.Net;
using System.Net.Sockets;
using KestrelProactor.Internal;
using KestrelProactor.Tests.Infrastructure;
using Microsoft.AspNetCore.Connections;

namespace KestrelProactor.Tests.Contract;

/// <summary>
/// An abort from another thread between <c>Start</c>'s publication of "started" and its scheduling of the start runs
/// first on the dispatcher, before the connection is in the operation table. It must still end the connection: RST
/// to the peer, <c>ConnectionClosed</c>, and a <c>DisposeAsync</c> that returns. The interleaving is forced through
/// <see cref="ProactorConnection.TestStartHook"/>.
/// </summary>
public sealed class StartAbortRaceTests
{
    public static TheoryData<TransportKind> ProactorKinds => new(TransportFactories.Kinds.Where(ContractTransports.IsProactor));

    [Theory]
    [MemberData(nameof(ProactorKinds))]
    public async Task Abort_BetweenStartPublishingAndScheduling_ConnectionStillEnds(TransportKind kind)
    {
        Assert.SkipWhen(TestHost.IsWine, TestHost.WineResetBeforeReceive);
        // Arrange: the hook is process-wide; it acts only on this listener's connection, once.
        await using ListenerHarness harness = await ListenerHarness.BindAsync(kind);
        int port = harness.Port;
        var abortedInGap = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        ProactorConnection.TestStartHook = connection =>
        {
            if (connection.LocalEndPoint is IPEndPoint local && local.Port == port && !abortedInGap.Task.IsCompleted)
            {
                // Another thread aborts, and returns, while this one is between the two steps of Start.
                Task.Run(() => connection.Abort(new ConnectionAbortedException("Aborted while starting."))).Wait(TestTimeouts.Default);
                abortedInGap.TrySetResult();
            }
        };

        try
        {
            // Act: the server may reset the connection before the client's connect has reported success.
            Exception? clientError = null;
            try
            {
                Socket client = await harness.ConnectAsync();
                await abortedInGap.Task.DefaultTimeout();
                clientError = await Record.ExceptionAsync(() => RawClient.ReceiveToEndAsync(client));
            }
            catch (SocketException ex)
            {
                clientError = ex;
            }

            await abortedInGap.Task.DefaultTimeout();
            ConnectionContext connection = await harness.AcceptAsync();

            // Assert
            await ServerPipes.WhenClosedAsync(connection).DefaultTimeout();
            await harness.DisposeConnectionAsync(connection);
            Assert.Equal(SocketError.ConnectionReset, Assert.IsType<SocketException>(clientError).SocketErrorCode);

            // The listener (and whatever else held the slot a default token names) is unharmed.
            (Socket second, ConnectionContext secondConnection) = await harness.ConnectAndAcceptAsync();
            await RawClient.SendAllAsync(second, "still serving"u8.ToArray());
            Assert.Equal("still serving"u8.ToArray(), await ServerPipes.ReadExactlyAsync(secondConnection.Transport.Input, 13));
        }
        finally
        {
            ProactorConnection.TestStartHook = null;
        }
    }
}
