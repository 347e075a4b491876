using System.IO.Pipelines;
using System.Net.Sockets;
using KestrelProactor.Dispatching;
using KestrelProactor.Internal;
using KestrelProactor.IoUring;
using KestrelProactor.Tests.Contract;
using KestrelProactor.Tests.Infrastructure;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Connections.Features;
using Microsoft.Extensions.Logging;

namespace KestrelProactor.Tests.Dispatching;

/// <summary>
/// Direct sends (<see cref="ProactorTransportOptions.DirectSend"/>): a flush on an application thread sends itself
/// while the dispatcher sleeps. Its hazards, over real sockets: bytes in order when direct and ring sends alternate
/// (short sends, EAGAIN), the descriptor kept open while a flusher is inside its send, a failed direct send ending the
/// connection as a failed ring send does, and the modes where it stays off.
/// </summary>
[Collection(DispatcherHookCollection.Name)]
public class DirectSendTests
{
    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task RequestReply_WithDirectSend_RepliesLeaveFromTheFlushingThread(bool directSend)
    {
        // Arrange
        await using ListenerHarness harness = await ListenerHarness.BindAsync(TransportKind.Proactor, configure: o => o.DirectSend = directSend);
        (Socket client, ConnectionContext connection) = await harness.ConnectAndAcceptAsync();
        ProactorDispatcher dispatcher = ((ProactorConnection)connection).Dispatcher;
        long directBefore = dispatcher.DirectSends;
        long ringBefore = dispatcher.SendsStarted;
        Task echo = ServerPipes.EchoAsync(connection);

        // Act: request, reply, one at a time, as HTTP/1.1 keep-alive does.
        const int Exchanges = 200;
        for (int i = 0; i < Exchanges; i++)
        {
            byte[] request = RawClient.CreatePayload(100, seed: i);
            await RawClient.SendAllAsync(client, request).DefaultTimeout();
            byte[] reply = await RawClient.ReceiveExactlyAsync(client, request.Length).DefaultTimeout();
            Assert.Equal(request, reply);
        }

        client.Shutdown(SocketShutdown.Send);
        await echo.DefaultTimeout();

        // Assert: with the option, replies went out from the application's thread (the dispatcher is asleep between
        // requests, but the machine is shared, so not every one); without it, none.
        long direct = dispatcher.DirectSends - directBefore;
        long ring = dispatcher.SendsStarted - ringBefore;
        if (directSend)
        {
            Assert.True(direct >= Exchanges / 4, $"{direct} direct sends, {ring} ring sends for {Exchanges} replies");
        }
        else
        {
            Assert.Equal(0, direct);
            Assert.True(ring >= Exchanges, $"{ring} ring sends for {Exchanges} replies");
        }
    }

    [Theory]
    [InlineData(TransportEndpoint.Tcp)]
    [InlineData(TransportEndpoint.Unix)]
    public async Task FlushesLargerThanTheSocketTakes_DirectAndRingSendsAlternate_EveryByteInOrder(TransportEndpoint endpoint)
    {
        // Arrange: a small send buffer and a client that reads slowly, so direct sends come up short or meet EAGAIN
        // and hand the rest to the ring, and the next flushes find the ring's send in flight or the read parked again.
        await using ListenerHarness harness = await ListenerHarness.BindAsync(
            TransportKind.Proactor, endpoint, o => { o.DirectSend = true; o.OutputCoalescingDelay = TimeSpan.Zero; });
        (Socket client, ConnectionContext connection) = await harness.ConnectAndAcceptAsync();
        ((IConnectionSocketFeature)connection).Socket.SendBufferSize = 4096;
        ProactorDispatcher dispatcher = ((ProactorConnection)connection).Dispatcher;
        long directBefore = dispatcher.DirectSends;
        long ringBefore = dispatcher.SendsStarted;
        byte[] payload = RawClient.CreatePayload(4 * 1024 * 1024, seed: 21);
        Task<byte[]> received = ReceiveSlowlyToEndAsync(client);

        // Act: flushes of sizes from a few bytes to 96 KiB, then the end of the output.
        var sizes = new Random(21);
        for (int offset = 0; offset < payload.Length;)
        {
            int size = Math.Min(payload.Length - offset, sizes.Next(4) == 0 ? sizes.Next(1, 64) : sizes.Next(1, 96 * 1024));
            FlushResult flush = await connection.Transport.Output.WriteAsync(payload.AsMemory(offset, size)).AsTask().LongTimeout();
            Assert.False(flush.IsCompleted || flush.IsCanceled);
            offset += size;
        }

        await connection.Transport.Output.CompleteAsync();
        byte[] bytes = await received.LongTimeout();

        // Assert: all of it, in order, then FIN; both kinds of send took part.
        Assert.Equal(payload.Length, bytes.Length);
        Assert.Equal(RawClient.Hash(payload), RawClient.Hash(bytes));
        Assert.True(dispatcher.DirectSends > directBefore, "no direct send");
        Assert.True(dispatcher.SendsStarted > ringBefore, "no ring send: nothing was handed back");
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Close_WhileAFlusherIsInsideItsSend_WaitsForIt_ThenEndsAsWithoutDirectSend(bool abort)
    {
        // Arrange: the flusher stops inside its direct send, holding the output, while the connection is aborted
        // (RST) or its output completed from elsewhere is not possible (one writer), so the graceful case aborts
        // without a reason (FIN).
        await using ListenerHarness harness = await ListenerHarness.BindAsync(TransportKind.Proactor, configure: o => o.DirectSend = true);
        (Socket client, ConnectionContext connection) = await harness.ConnectAndAcceptAsync();
        var proactor = (ProactorConnection)connection;
        var closed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        connection.ConnectionClosed.Register(() => closed.TrySetResult());
        using var inside = new ManualResetEventSlim();
        using var release = new ManualResetEventSlim();
        IoUringDispatcher.TestDirectSendHook = c =>
        {
            if (ReferenceEquals(c, proactor))
            {
                inside.Set();
                release.Wait(TestTimeouts.Long);
            }
        };
        try
        {
            // Wait until the dispatcher has parked its output read and sleeps, so the flush sends directly.
            await Eventually.TrueAsync(() => proactor.DescribeForTests().Contains("outputOwner=1") && proactor.Dispatcher.IsBlockedInWait, "a parked output read");
            byte[] reply = "direct"u8.ToArray();
            Task<FlushResult> flush = Task.Run(() => connection.Transport.Output.WriteAsync(reply).AsTask());
            Assert.True(inside.Wait(TestTimeouts.Default), "the flush did not send directly");

            // Act: end the connection while the flusher is inside its send.
            connection.Abort(abort ? new ConnectionAbortedException("test abort") : null!);
            await Eventually.TrueAsync(() => proactor.DescribeForTests().Contains("closing=True"), "the close to start");
            await Task.Delay(200, TestContext.Current.CancellationToken);

            // Assert: the close waits for the flusher; the descriptor is open and the connection not closed.
            Assert.False(closed.Task.IsCompleted, "the connection closed under a flusher inside its send");
            Assert.False(proactor.Socket.IsClosed, "the descriptor was closed under a flusher inside its send");

            release.Set();
            await flush.DefaultTimeout();
            await closed.Task.DefaultTimeout();
            (byte[] bytes, bool reset) = await ReceiveUntilEndAsync(client).DefaultTimeout();

            // The send went out before the close; the close is RST for an abort with a reason, FIN without.
            Assert.Equal(reply, bytes);
            Assert.Equal(abort, reset);
            await harness.DisposeConnectionAsync(connection);
            Assert.Equal(0, proactor.Dispatcher.InFlightOf(proactor));
        }
        finally
        {
            release.Set();
            IoUringDispatcher.TestDirectSendHook = null;
        }
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task SendFails_WithEPIPE_EndsTheConnectionAsAFailedRingSendDoes(bool directSend)
    {
        // Arrange: the server's own write side is shut, so the next send fails with EPIPE whoever makes it, while the
        // receive side (which would see a peer's reset first) stays quiet.
        await using ListenerHarness harness = await ListenerHarness.BindAsync(TransportKind.Proactor, configure: o => o.DirectSend = directSend);
        (Socket client, ConnectionContext connection) = await harness.ConnectAndAcceptAsync();
        var proactor = (ProactorConnection)connection;
        ((IConnectionSocketFeature)connection).Socket.Shutdown(SocketShutdown.Send);
        await Eventually.TrueAsync(() => proactor.DescribeForTests().Contains(directSend ? "outputOwner=1" : "outputReadPending=True") && proactor.Dispatcher.IsBlockedInWait, "a parked output read");
        long directBefore = proactor.Dispatcher.DirectSends;

        // Act
        await connection.Transport.Output.WriteAsync("lost"u8.ToArray()).AsTask().DefaultTimeout();
        Exception? error = await Record.ExceptionAsync(async () =>
        {
            while (true)
            {
                ReadResult read = await connection.Transport.Input.ReadAsync().AsTask().DefaultTimeout();
                connection.Transport.Input.AdvanceTo(read.Buffer.End);
                if (read.IsCompleted)
                {
                    return;
                }
            }
        });

        // Assert: the input ends with the reset, as on the socket transport, and the connection closes.
        Assert.IsType<ConnectionResetException>(error);
        Assert.Equal(directSend ? 1 : 0, proactor.Dispatcher.DirectSends - directBefore);
        await harness.DisposeConnectionAsync(connection).DefaultTimeout();
        Assert.Equal(0, proactor.Dispatcher.InFlightOf(proactor));
    }

    [Theory]
    [InlineData(TransportKind.ProactorInline, 0)]
    [InlineData(TransportKind.Proactor, 1)]
    public async Task DirectSend_InlineModeOrZeroCopySizes_StaysOnTheRing(TransportKind kind, int zeroCopySendThreshold)
    {
        // Arrange: inline mode flushes on the dispatcher (nothing to save); zero-copy sizes are the ring's to send.
        await using ListenerHarness harness = await ListenerHarness.BindAsync(kind, configure: o => { o.DirectSend = true; o.ZeroCopySendThreshold = zeroCopySendThreshold; });
        (Socket client, ConnectionContext connection) = await harness.ConnectAndAcceptAsync();
        ProactorDispatcher dispatcher = ((ProactorConnection)connection).Dispatcher;
        Task echo = ServerPipes.EchoAsync(connection);
        byte[] payload = RawClient.CreatePayload(256 * 1024, seed: 22);

        // Act
        byte[] echoed = await RawClient.ExchangeAsync(client, payload).LongTimeout();
        await echo.DefaultTimeout();

        // Assert
        Assert.Equal(RawClient.Hash(payload), RawClient.Hash(echoed));
        Assert.Equal(0, dispatcher.DirectSends);
        string features = ((ProactorTransportFactory)harness.Factory).Backend!.FeatureSummary;
        Assert.Equal(kind == TransportKind.Proactor, features.Split(", ").Contains("direct-send"));
    }

    [Fact]
    public async Task DispatcherFails_WhileAFlusherIsAboutToClaimTheOutput_TheFlusherLeavesThePipeAlone()
    {
        // Arrange: a flusher that passed the checks for a direct send (the output parked, the dispatcher asleep) is
        // held before its claim.
        var pool = new TrackingMemoryPool();
        await using ListenerHarness harness = await ListenerHarness.BindAsync(TransportKind.Proactor, configure: o => o.DirectSend = true, memoryPool: pool);
        (Socket client, ConnectionContext connection) = await harness.ConnectAndAcceptAsync();
        var proactor = (ProactorConnection)connection;
        ProactorDispatcher target = proactor.Dispatcher;
        using var atClaim = new ManualResetEventSlim();
        using var release = new ManualResetEventSlim();
        int failed = 0;
        int continuationsAfterFailure = 0;
        ProactorDispatcher.TestHandlerHook = (owner, kind) =>
        {
            if (ReferenceEquals(owner, proactor) && kind == OperationKind.Send && Volatile.Read(ref failed) == 1)
            {
                Interlocked.Increment(ref continuationsAfterFailure);
            }
        };
        ProactorConnection.TestDirectSendClaimHook = c =>
        {
            if (ReferenceEquals(c, proactor))
            {
                atClaim.Set();
                release.Wait(TestTimeouts.Long);
            }
        };
        try
        {
            await Eventually.TrueAsync(() => proactor.DescribeForTests().Contains("outputOwner=1") && target.IsBlockedInWait, "a parked output read");
            long directBefore = target.DirectSends;
            Task<FlushResult> flush = Task.Run(() => connection.Transport.Output.WriteAsync("late"u8.ToArray()).AsTask());
            Assert.True(atClaim.Wait(TestTimeouts.Default), "the flush did not try to send directly");

            // Act: the dispatcher fails (and releases the connection) before the flusher claims the output.
            await FailAsync(target);
            Volatile.Write(ref failed, 1);
            release.Set();
            await flush.DefaultTimeout();

            // Assert: the claim failed, so the flusher neither read the pipe nor tried to send; the output is ended.
            string state = proactor.DescribeForTests();
            Assert.Equal(0, Volatile.Read(ref continuationsAfterFailure));
            Assert.Equal(0, target.DirectSends - directBefore);
            Assert.Contains("outputOwner=3", state);
            Assert.Contains("kept=False", state);
            await harness.DisposeConnectionAsync(connection).DefaultTimeout();
            Assert.Empty(pool.CollectErrors());
        }
        finally
        {
            release.Set();
            ProactorConnection.TestDirectSendClaimHook = null;
            ProactorDispatcher.TestHandlerHook = null;
        }
    }

    [Fact]
    public async Task DispatcherFails_AfterAFlusherClaimedTheOutput_TheFlusherCompletesTheReaderAndSendsNothing()
    {
        // Arrange: a flusher that claimed the output is held before the read's continuation runs.
        var pool = new TrackingMemoryPool();
        await using ListenerHarness harness = await ListenerHarness.BindAsync(TransportKind.Proactor, configure: o => o.DirectSend = true, memoryPool: pool);
        (Socket client, ConnectionContext connection) = await harness.ConnectAndAcceptAsync();
        var proactor = (ProactorConnection)connection;
        ProactorDispatcher target = proactor.Dispatcher;
        using var claimed = new ManualResetEventSlim();
        using var release = new ManualResetEventSlim();
        ProactorConnection.TestDirectSendClaimedHook = c =>
        {
            if (ReferenceEquals(c, proactor))
            {
                claimed.Set();
                release.Wait(TestTimeouts.Long);
            }
        };
        try
        {
            await Eventually.TrueAsync(() => proactor.DescribeForTests().Contains("outputOwner=1") && target.IsBlockedInWait, "a parked output read");
            long directBefore = target.DirectSends;
            Task<FlushResult> flush = Task.Run(() => connection.Transport.Output.WriteAsync("late"u8.ToArray()).AsTask());
            Assert.True(claimed.Wait(TestTimeouts.Default), "the flush did not claim the output");

            // Act: the dispatcher fails (its ring torn down, the connection released) while the flusher owns the output.
            await FailAsync(target);
            release.Set();
            await flush.DefaultTimeout();

            // Assert: the flusher took its own path (before, it took the dispatcher's and touched the torn-down ring:
            // the process died), sent nothing, ended the output, and every block comes back.
            Assert.Equal(0, target.DirectSends - directBefore);
            string state = proactor.DescribeForTests();
            Assert.Contains("outputOwner=3", state);
            Assert.Contains("kept=False", state);
            await harness.DisposeConnectionAsync(connection).DefaultTimeout();
            await Eventually.TrueAsync(() => pool.Outstanding == 0, $"every pool block back ({pool.Outstanding} out)");
            Assert.Empty(pool.CollectErrors());
        }
        finally
        {
            release.Set();
            ProactorConnection.TestDirectSendClaimedHook = null;
        }
    }

    [Fact]
    public async Task DispatcherFails_WhileAFlusherIsInsideItsSend_TheFlusherEndsTheOutputAndNothingIsKeptForGood()
    {
        // Arrange: the flusher owns the output and stops inside its direct send.
        var pool = new TrackingMemoryPool();
        ListenerHarness harness = await ListenerHarness.BindAsync(TransportKind.Proactor, configure: o => o.DirectSend = true, memoryPool: pool);
        try
        {
            (Socket client, ConnectionContext connection) = await harness.ConnectAndAcceptAsync();
            var proactor = (ProactorConnection)connection;
            ProactorDispatcher target = proactor.Dispatcher;
            using var inside = new ManualResetEventSlim();
            using var release = new ManualResetEventSlim();
            IoUringDispatcher.TestDirectSendHook = c =>
            {
                if (ReferenceEquals(c, proactor))
                {
                    inside.Set();
                    release.Wait(TestTimeouts.Long);
                }
            };
            try
            {
                await Eventually.TrueAsync(() => proactor.DescribeForTests().Contains("outputOwner=1") && target.IsBlockedInWait, "a parked output read");
                byte[] reply = RawClient.CreatePayload(1000, seed: 23);
                Task<FlushResult> flush = Task.Run(() => connection.Transport.Output.WriteAsync(reply).AsTask());
                Assert.True(inside.Wait(TestTimeouts.Default), "the flush did not send directly");
                int returnedBefore = pool.Rented - pool.Outstanding;

                // Act: the dispatcher fails while the flusher sends.
                await FailAsync(target);
                await Task.Delay(100, TestContext.Current.CancellationToken);

                // Assert: no block went back to the pool under the send (the flusher still reads the pipe), and the
                // memory is not kept for good for a copying send.
                Assert.Equal(returnedBefore, pool.Rented - pool.Outstanding);
                Assert.Contains("kept=False", proactor.DescribeForTests());
                release.Set();
                await flush.DefaultTimeout();
                (byte[] bytes, _) = await ReceiveUntilEndAsync(client).DefaultTimeout();
                Assert.Equal(reply, bytes);
                Assert.Contains("kept=False", proactor.DescribeForTests());
            }
            finally
            {
                release.Set();
                IoUringDispatcher.TestDirectSendHook = null;
            }

            await harness.DisposeConnectionAsync(connection).DefaultTimeout();
        }
        finally
        {
            await harness.DisposeAsync();
        }

        // Every block went back: the flusher completed the output's reader once its send was over.
        await Eventually.TrueAsync(() => pool.Outstanding == 0, "every block back in the pool");
        Assert.Empty(pool.CollectErrors());
    }

    [Fact]
    public async Task WriterCompletesWithAnError_WhileAFlusherSends_EndsAsTheApplicationsErrorNotATransportFault()
    {
        // Arrange: the flusher stops inside its first send, while the application completes its output with an error
        // from another thread; the flusher's next read meets that error.
        var logs = new CapturingLoggerFactory();
        await using ListenerHarness harness = await ListenerHarness.BindAsync(TransportKind.Proactor, configure: o => o.DirectSend = true, loggerFactory: logs);
        (Socket client, ConnectionContext connection) = await harness.ConnectAndAcceptAsync();
        var proactor = (ProactorConnection)connection;
        using var inside = new ManualResetEventSlim();
        using var release = new ManualResetEventSlim();
        IoUringDispatcher.TestDirectSendHook = c =>
        {
            if (ReferenceEquals(c, proactor) && !inside.IsSet)
            {
                inside.Set();
                release.Wait(TestTimeouts.Long);
            }
        };
        try
        {
            await Eventually.TrueAsync(() => proactor.DescribeForTests().Contains("outputOwner=1") && proactor.Dispatcher.IsBlockedInWait, "a parked output read");
            Task<FlushResult> flush = Task.Run(() => connection.Transport.Output.WriteAsync("direct"u8.ToArray()).AsTask());
            Assert.True(inside.Wait(TestTimeouts.Default), "the flush did not send directly");

            // Act
            var appError = new InvalidDataException("the application's own error");
            connection.Transport.Output.Complete(appError);
            release.Set();
            await flush.DefaultTimeout();
            Exception? error = await Record.ExceptionAsync(async () =>
            {
                while (true)
                {
                    ReadResult read = await connection.Transport.Input.ReadAsync().AsTask().DefaultTimeout();
                    connection.Transport.Input.AdvanceTo(read.Buffer.End);
                    if (read.IsCompleted)
                    {
                        return;
                    }
                }
            });

            // Assert: the input ends with the application's error, as when the dispatcher reads it, and nothing is
            // logged as a transport fault.
            Assert.Same(appError, error);
            Assert.DoesNotContain(logs.Entries, e => e.Level >= LogLevel.Error);
            await harness.DisposeConnectionAsync(connection).DefaultTimeout();
        }
        finally
        {
            release.Set();
            IoUringDispatcher.TestDirectSendHook = null;
        }
    }

    /// <summary>Fails <paramref name="target"/>'s loop as a ring failure would and waits until it has ended.</summary>
    private static async Task FailAsync(ProactorDispatcher target)
    {
        try
        {
            ProactorDispatcher.TestLoopHook = d =>
            {
                if (ReferenceEquals(d, target))
                {
                    throw new InvalidOperationException("injected ring failure");
                }
            };
            target.Schedule(static _ => { }, null);
            await DispatcherEndDrainTests.WaitUntilAsync(() => target.HasEnded);
        }
        finally
        {
            ProactorDispatcher.TestLoopHook = null;
        }
    }

    /// <summary>Reads in small bites with pauses, so the server's sends meet a full socket now and then.</summary>
    private static async Task<byte[]> ReceiveSlowlyToEndAsync(Socket socket)
    {
        var all = new MemoryStream();
        byte[] buffer = new byte[16 * 1024];
        for (int reads = 0; reads < 1_000_000; reads++)
        {
            int read = await socket.ReceiveAsync(buffer, SocketFlags.None);
            if (read == 0)
            {
                break;
            }

            all.Write(buffer, 0, read);
            if (reads % 16 == 0)
            {
                await Task.Delay(1);
            }
        }

        return all.ToArray();
    }

    /// <summary>Reads until FIN (false) or reset (true); returns what arrived.</summary>
    private static async Task<(byte[] Bytes, bool Reset)> ReceiveUntilEndAsync(Socket socket)
    {
        var all = new MemoryStream();
        byte[] buffer = new byte[4096];
        while (true)
        {
            int read;
            try
            {
                read = await socket.ReceiveAsync(buffer, SocketFlags.None);
            }
            catch (SocketException ex) when (ex.SocketErrorCode == SocketError.ConnectionReset)
            {
                return (all.ToArray(), true);
            }

            if (read == 0)
            {
                return (all.ToArray(), false);
            }

            all.Write(buffer, 0, read);
        }
    }
}
