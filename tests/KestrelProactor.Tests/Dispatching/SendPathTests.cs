using System.Diagnostics;
using System.IO.Pipelines;
using System.Net.Sockets;
using KestrelProactor.Dispatching;
using KestrelProactor.Internal;
using KestrelProactor.IoUring;
using KestrelProactor.Tests.Contract;
using KestrelProactor.Tests.Infrastructure;
using Microsoft.AspNetCore.Connections;

namespace KestrelProactor.Tests.Dispatching;

/// <summary>
/// The send path's variants: zero-copy sends (two completions each) and the gathering of a streamed response's
/// small flushes must deliver every byte in order.
/// </summary>
public class SendPathTests
{
    [Theory]
    [InlineData(TransportKind.Proactor)]
    [InlineData(TransportKind.ProactorInline)]
    public async Task ZeroCopySends_LargeEcho_EveryByteArrivesInOrder(TransportKind kind)
    {
        // Arrange: every send of 1 KiB or more goes zero-copy, including gathered ones (SENDMSG_ZC).
        await using ListenerHarness harness = await ListenerHarness.BindAsync(kind, configure: o => o.ZeroCopySendThreshold = 1024);
        var factory = (ProactorTransportFactory)harness.Factory;
        (Socket client, ConnectionContext connection) = await harness.ConnectAndAcceptAsync();
        Task echo = ServerPipes.EchoAsync(connection);
        byte[] payload = RawClient.CreatePayload(8 * 1024 * 1024, seed: 11);

        // Act
        byte[] echoed = await RawClient.ExchangeAsync(client, payload).LongTimeout();
        client.Shutdown(SocketShutdown.Send);
        await echo.DefaultTimeout();

        // Assert
        Assert.Contains(factory.Backend!.FeatureSummary.Split(", "), f => f.StartsWith("send-zc", StringComparison.Ordinal));
        Assert.Equal(RawClient.Hash(payload), RawClient.Hash(echoed));
    }

    [Theory]
    [InlineData(0)]
    [InlineData(1024)]
    public async Task SendsEndingWithEAGAIN_GoOutAgain_EveryByteArrivesInOrder(int zeroCopySendThreshold)
    {
        // Arrange: every other send of this connection completes with EAGAIN having sent nothing, as a send handed to
        // the kernel's worker thread does on a non-blocking socket (sendmsg honours O_NONBLOCK there); copied sends,
        // and zero-copy ones (1 KiB and more).
        Assert.SkipUnless(KernelVersion.AtLeast(6, 10), "Injecting a NOP's result needs Linux 6.10.");
        await using ListenerHarness harness = await ListenerHarness.BindAsync(TransportKind.Proactor, configure: o => o.ZeroCopySendThreshold = zeroCopySendThreshold);
        (Socket client, ConnectionContext connection) = await harness.ConnectAndAcceptAsync();
        var dispatcher = (IoUringDispatcher)((ProactorConnection)connection).Dispatcher;
        int sends = 0;
        IoUringDispatcher.TestSendWouldBlock = candidate => ReferenceEquals(candidate, connection) && Interlocked.Increment(ref sends) % 2 == 1;
        try
        {
            Task echo = ServerPipes.EchoAsync(connection);
            byte[] payload = RawClient.CreatePayload(2 * 1024 * 1024, seed: 12);

            // Act
            byte[] echoed = await RawClient.ExchangeAsync(client, payload).LongTimeout();
            await echo.DefaultTimeout();

            // Assert: the connection never saw the EAGAINs; what they did not send went out again, in order.
            Assert.Equal(RawClient.Hash(payload), RawClient.Hash(echoed));
            Assert.True(dispatcher.SendsRetriedAfterWouldBlock > 0, "no send ended with EAGAIN");
        }
        finally
        {
            IoUringDispatcher.TestSendWouldBlock = null;
        }
    }

    private const int ChunkSize = 1024;
    private const int ChunkCount = 1024;

    [Theory]
    [InlineData(TransportKind.Proactor, true)]
    [InlineData(TransportKind.ProactorInline, true)]
    [InlineData(TransportKind.Proactor, false)]
    public async Task StreamedSmallFlushes_GoOutInFewerSends_EveryByteArrivesInOrder(TransportKind kind, bool gathering)
    {
        // Arrange: the longest delay, so the count below does not depend on the machine's speed; or none.
        TimeSpan delay = gathering ? TimeSpan.FromMilliseconds(1) : TimeSpan.Zero;
        await using ListenerHarness harness = await ListenerHarness.BindAsync(kind, configure: o => o.OutputCoalescingDelay = delay);
        (Socket client, ConnectionContext connection) = await harness.ConnectAndAcceptAsync();
        ProactorDispatcher dispatcher = ((ProactorConnection)connection).Dispatcher;
        byte[] payload = RawClient.CreatePayload(ChunkSize * ChunkCount, seed: 5);
        long sendsBefore = dispatcher.SendsStarted;
        long deferredBefore = dispatcher.OutputReadsDeferred;
        Task<byte[]> received = RawClient.ReceiveToEndAsync(client);

        // Act: the application streams a response, one flush per 1 KiB, with no input in between. It works for
        // 100 µs between flushes, so the dispatcher is the faster side: it would send each flush on its own if it
        // did not hold its reads back.
        await StreamAsync(connection.Transport.Output, payload, workBetweenFlushes: TimeSpan.FromMicroseconds(100));
        await connection.Transport.Output.CompleteAsync();
        byte[] bytes = await received.LongTimeout();

        // Assert: all of it, in order, then FIN; gathered, far fewer sends than flushes (655-843 sends here without).
        Assert.Equal(RawClient.Hash(payload), RawClient.Hash(bytes));
        long sends = dispatcher.SendsStarted - sendsBefore;
        if (gathering)
        {
            Assert.True(dispatcher.OutputReadsDeferred > deferredBefore, "no output read was held back");
            Assert.True(sends <= ChunkCount / 4, $"{sends} sends for {ChunkCount} flushes");
        }
        else
        {
            Assert.Equal(deferredBefore, dispatcher.OutputReadsDeferred);
        }
    }

    [Theory]
    [InlineData(TransportKind.Proactor)]
    [InlineData(TransportKind.ProactorInline)]
    public async Task StreamingThenInput_TheReplyFollowsTheStreamInOrder(TransportKind kind)
    {
        // Arrange: the longest delay, so input is likely to arrive while a read is held back.
        await using ListenerHarness harness = await ListenerHarness.BindAsync(kind, configure: o => o.OutputCoalescingDelay = TimeSpan.FromMilliseconds(1));
        (Socket client, ConnectionContext connection) = await harness.ConnectAndAcceptAsync();
        byte[] stream = RawClient.CreatePayload(ChunkSize * 64, seed: 7);
        byte[] reply = "reply"u8.ToArray();

        // Act: stream, then answer one byte of input, then end.
        await StreamAsync(connection.Transport.Output, stream);
        byte[] streamed = await RawClient.ReceiveExactlyAsync(client, stream.Length).DefaultTimeout();
        await RawClient.SendAllAsync(client, "?"u8.ToArray()).DefaultTimeout();
        ReadResult input = await connection.Transport.Input.ReadAsync().AsTask().DefaultTimeout();
        connection.Transport.Input.AdvanceTo(input.Buffer.End);
        await connection.Transport.Output.WriteAsync(reply).AsTask().DefaultTimeout();
        await connection.Transport.Output.CompleteAsync();
        byte[] rest = await RawClient.ReceiveToEndAsync(client).DefaultTimeout();

        // Assert
        Assert.Equal(RawClient.Hash(stream), RawClient.Hash(streamed));
        Assert.Equal(1, input.Buffer.Length);
        Assert.Equal(reply, rest);
    }

    [Fact]
    public async Task AbortWhileStreaming_ClientSeesTheEnd_ConnectionIsReleased()
    {
        // Arrange
        await using ListenerHarness harness = await ListenerHarness.BindAsync(TransportKind.Proactor, configure: o => o.OutputCoalescingDelay = TimeSpan.FromMilliseconds(1));
        (Socket client, ConnectionContext connection) = await harness.ConnectAndAcceptAsync();
        ProactorDispatcher dispatcher = ((ProactorConnection)connection).Dispatcher;
        byte[] chunk = RawClient.CreatePayload(ChunkSize, seed: 8);
        var closed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        connection.ConnectionClosed.Register(() => closed.TrySetResult());
        Task<byte[]> received = ReceiveUntilEndAsync(client);

        // Act: stream until some reads have been held back, then abort mid-stream. The writes are paced (50 µs of
        // work each) as a handler's would be: written in one burst, they can outrun the sends, and a send's worth
        // already waiting is sent at once rather than held back.
        long deferredBefore = dispatcher.OutputReadsDeferred;
        for (int i = 0; i < 4096 && dispatcher.OutputReadsDeferred < deferredBefore + 4; i++)
        {
            Work(TimeSpan.FromMicroseconds(50));
            await connection.Transport.Output.WriteAsync(chunk).AsTask().DefaultTimeout();
        }

        connection.Abort(new ConnectionAbortedException("test abort"));
        await received.DefaultTimeout();
        await closed.Task.DefaultTimeout();
        await harness.DisposeConnectionAsync(connection);

        // Assert: the stream was cut, and the connection left its dispatcher with nothing in flight for it.
        Assert.True(dispatcher.OutputReadsDeferred >= deferredBefore + 4, "the stream never held a read back");
        Assert.Equal(0, dispatcher.InFlightOf((ProactorConnection)connection));
    }

    private static async Task StreamAsync(PipeWriter output, byte[] payload, TimeSpan workBetweenFlushes = default)
    {
        for (int offset = 0; offset < payload.Length; offset += ChunkSize)
        {
            Work(workBetweenFlushes);
            FlushResult flush = await output.WriteAsync(payload.AsMemory(offset, Math.Min(ChunkSize, payload.Length - offset))).AsTask().DefaultTimeout();
            Assert.False(flush.IsCompleted || flush.IsCanceled);
        }
    }

    /// <summary>Spins for <paramref name="duration"/>, as a handler's work between two writes would take.</summary>
    private static void Work(TimeSpan duration)
    {
        long until = Stopwatch.GetTimestamp() + (long)(duration.TotalSeconds * Stopwatch.Frequency);
        while (Stopwatch.GetTimestamp() < until)
        {
            Thread.SpinWait(20);
        }
    }

    /// <summary>Reads until FIN or reset; returns what arrived.</summary>
    private static async Task<byte[]> ReceiveUntilEndAsync(Socket client)
    {
        var all = new MemoryStream();
        byte[] buffer = new byte[64 * 1024];
        try
        {
            int read;
            while ((read = await client.ReceiveAsync(buffer, SocketFlags.None)) > 0)
            {
                all.Write(buffer, 0, read);
            }
        }
        catch (SocketException)
        {
            // Reset: the abort's RST.
        }

        return all.ToArray();
    }
}
