using System.IO.Pipelines;
using System.Runtime.CompilerServices;
using KestrelProactor.Tests.Infrastructure;
using static KestrelProactor.Tests.Pipes.ConformanceData;

namespace KestrelProactor.Tests.Pipes;

/// <summary>PipeReader conformance: ReadAsync, TryRead, CancelPendingRead and cancellation tokens, against Pipe and the input.</summary>
public sealed class ReadConformanceTests
{
    [Theory]
    [MemberData(nameof(ConformanceData.Modes), MemberType = typeof(ConformanceData))]
    public async Task ReadAsync_NothingYet_CompletesWhenBytesArrive(InputMode mode)
    {
        using InputUnderTest input = InputUnderTest.Create(mode);
        ValueTask<ReadResult> read = input.Reader.ReadAsync();
        Assert.False(read.IsCompleted);

        input.Append(Ascii("hello"));

        ReadResult result = await read.AsTask().DefaultTimeout();
        Assert.Equal("hello", Text(result.Buffer));
        Assert.False(result.IsCanceled);
        Assert.False(result.IsCompleted);
    }

    [Theory]
    [MemberData(nameof(ConformanceData.Modes), MemberType = typeof(ConformanceData))]
    public async Task CancelPendingRead_WhileReadPending_ReturnsCanceled(InputMode mode)
    {
        using InputUnderTest input = InputUnderTest.Create(mode);
        Task<ReadResult> read = input.Reader.ReadAsync().AsTask();

        input.Reader.CancelPendingRead();

        ReadResult result = await read.DefaultTimeout();
        Assert.True(result.IsCanceled);
        Assert.False(result.IsCompleted);
        Assert.True(result.Buffer.IsEmpty);
    }

    [Theory]
    [MemberData(nameof(ConformanceData.Modes), MemberType = typeof(ConformanceData))]
    public async Task CancelPendingRead_ResultBuiltWhenConsumed_HoldsBytesThatArrivedAfterTheCancel(InputMode mode)
    {
        // Pipe builds a completed read's result in GetResult; the input used to build it when the read completed,
        // so bytes arriving between the cancel and the application's await were missing from it.
        using InputUnderTest input = InputUnderTest.Create(mode);
        ValueTask<ReadResult> read = input.Reader.ReadAsync();
        input.Reader.CancelPendingRead();
        input.Append(Ascii("late"));

        ReadResult result = await read.AsTask().DefaultTimeout();

        Assert.True(result.IsCanceled);
        Assert.Equal("late", Text(result.Buffer));
    }

    [Theory]
    [MemberData(nameof(ConformanceData.Modes), MemberType = typeof(ConformanceData))]
    public async Task CancelPendingRead_BeforeRead_NextReadCanceledOnce(InputMode mode)
    {
        using InputUnderTest input = InputUnderTest.Create(mode);
        input.Reader.CancelPendingRead();

        ReadResult canceled = ReadNow(input.Reader);
        Assert.True(canceled.IsCanceled);
        input.Reader.AdvanceTo(canceled.Buffer.Start, canceled.Buffer.End);

        // Observed once: the next read waits for bytes and is not canceled.
        ValueTask<ReadResult> next = input.Reader.ReadAsync();
        Assert.False(next.IsCompleted);
        input.Append(Ascii("x"));
        ReadResult result = await next.AsTask().DefaultTimeout();
        Assert.False(result.IsCanceled);
        Assert.Equal("x", Text(result.Buffer));
    }

    [Theory]
    [MemberData(nameof(ConformanceData.Modes), MemberType = typeof(ConformanceData))]
    public void CancelPendingRead_ThenReadAgainWithoutAdvance_IsAllowed(InputMode mode)
    {
        // A canceled result leaves the reader free to read again at once (Pipe's "tentative" read).
        using InputUnderTest input = InputUnderTest.Create(mode);
        input.Append(Ascii("abc"));
        input.Reader.CancelPendingRead();
        ReadResult canceled = ReadNow(input.Reader);
        Assert.True(canceled.IsCanceled);
        Assert.Equal("abc", Text(canceled.Buffer));

        ReadResult again = ReadNow(input.Reader);
        Assert.False(again.IsCanceled);
        Assert.Equal("abc", Text(again.Buffer));
    }

    [Theory]
    [MemberData(nameof(ConformanceData.Modes), MemberType = typeof(ConformanceData))]
    public void CancelPendingRead_AfterWriterCompleted_IsCompletedAndCanceled(InputMode mode)
    {
        using InputUnderTest input = InputUnderTest.Create(mode);
        input.Append(Ascii("abc"));
        input.CompleteWriter();

        input.Reader.CancelPendingRead();
        ReadResult result = ReadNow(input.Reader);

        Assert.True(result.IsCanceled);
        Assert.True(result.IsCompleted);
        Assert.Equal("abc", Text(result.Buffer));
    }

    [Theory]
    [MemberData(nameof(ConformanceData.Modes), MemberType = typeof(ConformanceData))]
    public void CancelPendingRead_BetweenReadAndAdvanceThatExaminedAll_NextReadCanceledAtOnce(InputMode mode)
    {
        // Kestrel cancels while it parses (a keep-alive time-out, a graceful stop), then advances having examined
        // everything: the cancel must not wait for more bytes.
        using InputUnderTest input = InputUnderTest.Create(mode);
        input.Append(Ascii("abc"));
        ReadResult first = ReadNow(input.Reader);
        input.Reader.CancelPendingRead();
        input.Reader.AdvanceTo(first.Buffer.Start, first.Buffer.End);

        ReadResult canceled = ReadNow(input.Reader);
        Assert.True(canceled.IsCanceled);
        Assert.Equal("abc", Text(canceled.Buffer));
        input.Reader.AdvanceTo(canceled.Buffer.Start, canceled.Buffer.End);
        Assert.False(input.Reader.ReadAsync().IsCompleted);
    }

    [Theory]
    [MemberData(nameof(ConformanceData.Modes), MemberType = typeof(ConformanceData))]
    public void TryRead_Nothing_ReturnsFalseAndAllowsReadAsync(InputMode mode)
    {
        using InputUnderTest input = InputUnderTest.Create(mode);

        Assert.False(input.Reader.TryRead(out ReadResult none));
        Assert.True(none.Buffer.IsEmpty);

        input.Append(Ascii("abc"));
        Assert.Equal("abc", Text(ReadNow(input.Reader).Buffer));
    }

    [Theory]
    [MemberData(nameof(ConformanceData.Modes), MemberType = typeof(ConformanceData))]
    public void TryRead_Bytes_ReturnsThemAndNeedsAdvanceBeforeNextRead(InputMode mode)
    {
        using InputUnderTest input = InputUnderTest.Create(mode);
        input.Append(Ascii("abc"));

        Assert.True(input.Reader.TryRead(out ReadResult result));
        Assert.Equal("abc", Text(result.Buffer));
        Assert.Throws<InvalidOperationException>(() => input.Reader.TryRead(out _));
        input.Reader.AdvanceTo(result.Buffer.GetPosition(1), result.Buffer.GetPosition(1));

        // Bytes not examined yet: TryRead finds them without new ones arriving.
        Assert.True(input.Reader.TryRead(out ReadResult rest));
        Assert.Equal("bc", Text(rest.Buffer));
    }

    [Theory]
    [MemberData(nameof(ConformanceData.Modes), MemberType = typeof(ConformanceData))]
    public void TryRead_WhileReadAsyncPending_Throws(InputMode mode)
    {
        using InputUnderTest input = InputUnderTest.Create(mode);
        _ = input.Reader.ReadAsync();

        var error = Assert.Throws<InvalidOperationException>(() => input.Reader.TryRead(out _));
        Assert.Equal("Reading is already in progress.", error.Message);
    }

    [Theory]
    [MemberData(nameof(ConformanceData.Modes), MemberType = typeof(ConformanceData))]
    public void TryRead_WriterFailed_RethrowsItsExceptionWithItsStack(InputMode mode)
    {
        using InputUnderTest input = InputUnderTest.Create(mode);
        input.Append(Ascii("abc"));
        Exception thrown = CaptureThrown();
        input.CompleteWriter(thrown);

        var error = Assert.Throws<IOException>(() => input.Reader.TryRead(out _));

        Assert.Same(thrown, error);
        // The stack of the original throw is kept (the input used to `throw _writerError`, which replaced it).
        Assert.Contains(nameof(ThrowFromHere), error.StackTrace);
    }

    [Theory]
    [MemberData(nameof(ConformanceData.Modes), MemberType = typeof(ConformanceData))]
    public async Task ReadAsync_CanceledToken_ThrowsWithoutTakingBytes(InputMode mode)
    {
        using InputUnderTest input = InputUnderTest.Create(mode);
        input.Append(Ascii("abc"));
        using var cts = new CancellationTokenSource();
        cts.Cancel();

        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => input.Reader.ReadAsync(cts.Token).AsTask());

        Assert.Equal("abc", Text(ReadNow(input.Reader).Buffer));
    }

    [Theory]
    [MemberData(nameof(ConformanceData.Modes), MemberType = typeof(ConformanceData))]
    public async Task ReadAsync_TokenFiresWhilePending_ThrowsThenNextReadWorks(InputMode mode)
    {
        using InputUnderTest input = InputUnderTest.Create(mode);
        using var cts = new CancellationTokenSource();
        Task<ReadResult> read = input.Reader.ReadAsync(cts.Token).AsTask();

        cts.Cancel();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => read.DefaultTimeout());

        // The token's cancel leaves the reader signaled, as Pipe: the next read returns at once, not canceled.
        input.Append(Ascii("abc"));
        ReadResult next = await ReadWithTimeout(input.Reader);
        Assert.False(next.IsCanceled);
        Assert.Equal("abc", Text(next.Buffer));
    }

    [Theory]
    [MemberData(nameof(ConformanceData.Modes), MemberType = typeof(ConformanceData))]
    public async Task ReadAsync_EarlierReadsTokenFiresLater_DoesNotCancelTheCurrentRead(InputMode mode)
    {
        using InputUnderTest input = InputUnderTest.Create(mode);
        using var first = new CancellationTokenSource();
        input.Append(Ascii("a"));
        ReadResult result = await ReadWithTimeout(input.Reader, first.Token);
        input.Reader.AdvanceTo(result.Buffer.End);

        Task<ReadResult> second = input.Reader.ReadAsync().AsTask();
        first.Cancel();
        Assert.False(second.IsCompleted);
        input.Append(Ascii("b"));
        ReadResult b = await second.DefaultTimeout();
        Assert.False(b.IsCanceled);
        Assert.Equal("b", Text(b.Buffer));
    }

    [Theory]
    [MemberData(nameof(ConformanceData.Modes), MemberType = typeof(ConformanceData))]
    public async Task ReadAsync_ConcurrentSecondRead_FailsWithInvalidOperation(InputMode mode)
    {
        using InputUnderTest input = InputUnderTest.Create(mode);
        Task<ReadResult> first = input.Reader.ReadAsync().AsTask();

        await Assert.ThrowsAsync<InvalidOperationException>(async () => await input.Reader.ReadAsync());

        if (mode == InputMode.Pipe)
        {
            // Pipe fails the whole pipe when the second read is awaited (its writer is completed with the error).
            await Assert.ThrowsAsync<InvalidOperationException>(() => first.DefaultTimeout());
        }
        else
        {
            // The input refuses the second read at once and leaves the first alone: one misuse should not end a
            // connection's input.
            input.Append(Ascii("abc"));
            Assert.Equal("abc", Text((await first.DefaultTimeout()).Buffer));
        }
    }

    private static Exception CaptureThrown()
    {
        try
        {
            ThrowFromHere();
        }
        catch (IOException ex)
        {
            return ex;
        }

        throw new InvalidOperationException("unreachable");
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void ThrowFromHere() => throw new IOException("the writer failed");
}
