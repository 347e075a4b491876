using System.Net.Sockets;
using KestrelProactor.Dispatching;
using KestrelProactor.Internal;
using KestrelProactor.IoUring;
using KestrelProactor.Tests.Contract;
using KestrelProactor.Tests.Infrastructure;
using Microsoft.AspNetCore.Connections;

namespace KestrelProactor.Tests.Dispatching;

/// <summary>
/// Preparing an operation that throws halfway (io_uring): the SQE it had taken, and the receive buffer the input
/// pipe had taken, must each end up with exactly one owner. The throw is injected where a real one could come
/// from (a full submission queue, a failed allocation): after the SQE is taken, before it is filled in.
/// </summary>
[Collection(nameof(SubmissionHookCollection))]
public sealed class SubmissionFaultTests
{
    [Theory]
    [InlineData(TransportKind.Proactor)]
    [InlineData(TransportKind.ProactorBasicTier)]
    public async Task SendSubmissionThrowsAfterTakingItsSqe_TheSqeGoesOutUnclaimed_ListenersCountIsKept(TransportKind kind)
    {
        // Arrange: one dispatcher, so the listener holds slot 0 and generation 0, the owner an all-zero SQE names.
        await using ListenerHarness harness = await ListenerHarness.BindAsync(kind, configure: o => o.DispatcherCount = 1);
        var dispatcher = (IoUringDispatcher)((ProactorTransportFactory)harness.Factory).Backend!.Dispatchers.Single();
        var listener = (ProactorConnectionListener)harness.Listener;
        (Socket client, ConnectionContext victim) = await harness.ConnectAndAcceptAsync();
        await WaitUntilAsync(() => dispatcher.InFlightOf(listener) == 1);
        var closed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        victim.ConnectionClosed.Register(() => closed.TrySetResult());
        int armed = 1;
        IoUringDispatcher.TestSubmissionHook = (owner, operation) =>
        {
            if (operation == OperationKind.Send && ReferenceEquals(owner, victim) && Interlocked.Exchange(ref armed, 0) == 1)
            {
                throw new InvalidOperationException("injected failure while preparing a send");
            }
        };

        try
        {
            // Act: the send the flush starts throws once its SQE is taken: that connection is aborted.
            await victim.Transport.Output.WriteAsync("reply"u8.ToArray()).AsTask().DefaultTimeout();
            await closed.Task.DefaultTimeout();
            Assert.Equal(0, armed);
        }
        finally
        {
            IoUringDispatcher.TestSubmissionHook = null;
        }

        // Assert: the abandoned SQE's completion was claimed by nobody; the listener's accept still counts as in
        // flight (its unbind waits on that count), and it still accepts.
        Assert.Equal(1, dispatcher.AbandonedSubmissions);
        Assert.Equal(0, dispatcher.StaleCompletions);
        Assert.Equal(1, dispatcher.InFlightOf(listener));
        (Socket fresh, ConnectionContext served) = await harness.ConnectAndAcceptAsync();
        Task echo = ServerPipes.EchoAsync(served);
        byte[] payload = RawClient.CreatePayload(10_000, seed: 41);
        Assert.Equal(payload, await RawClient.ExchangeAsync(fresh, payload));
        await echo.DefaultTimeout();
    }

    [Theory]
    [InlineData(TransportKind.ProactorSingleShot)]
    [InlineData(TransportKind.ProactorInline)]
    public async Task ReceiveHandlerThrowsAfterThePipeTookTheBuffer_TheBufferIsReturnedOnce(TransportKind kind)
    {
        // Arrange: single-shot receives, so the handler re-arms after the pipe took the data, and that re-arm throws;
        // with inline scheduling the application's read also runs inside the handler, before the throw.
        await using ListenerHarness harness = await ListenerHarness.BindAsync(kind, configure: o =>
        {
            o.DispatcherCount = 1;
            o.DisableMultishot = true;
        });
        (Socket client, ConnectionContext connection) = await harness.ConnectAndAcceptAsync();
        var server = (ProactorConnection)connection;
        var dispatcher = (IoUringDispatcher)server.Dispatcher;
        var closed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        connection.ConnectionClosed.Register(() => closed.TrySetResult());
        await WaitUntilAsync(() => dispatcher.InFlightOf(server) == 1);
        long faultsBefore = dispatcher.HandlerFaults;
        int armed = 1;
        IoUringDispatcher.TestSubmissionHook = (owner, operation) =>
        {
            if (operation == OperationKind.Receive && ReferenceEquals(owner, server) && Interlocked.Exchange(ref armed, 0) == 1)
            {
                throw new InvalidOperationException("injected failure while re-arming the receive");
            }
        };

        try
        {
            // Act: data arrives in a ring buffer, the input pipe takes it, then the re-arm throws.
            await RawClient.SendAllAsync(client, "hello"u8.ToArray());
            await closed.Task.DefaultTimeout();
            Assert.Equal(0, armed);
        }
        finally
        {
            IoUringDispatcher.TestSubmissionHook = null;
        }

        // Assert: the pipe still held the buffer, so only the pipe gave it back (once the connection is disposed);
        // a second return from the handler's clean-up would leave the count at -1 and the id twice in the ring.
        Assert.Equal(faultsBefore + 1, dispatcher.HandlerFaults);
        await harness.DisposeConnectionAsync(connection);
        await WaitUntilAsync(() => dispatcher.ReceiveBuffersLent == 0);
        Assert.Equal(0, dispatcher.ReceiveBuffersLent);
    }

    private static async Task WaitUntilAsync(Func<bool> condition)
    {
        using var timeout = new CancellationTokenSource(TestTimeouts.Default);
        while (!condition())
        {
            await Task.Delay(10, timeout.Token);
        }
    }
}

/// <summary>The submission hook is process-wide: the tests that set it run one after another.</summary>
[CollectionDefinition(nameof(SubmissionHookCollection))]
public sealed class SubmissionHookCollection;
