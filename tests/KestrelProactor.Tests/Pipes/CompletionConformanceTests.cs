using System.IO.Pipelines;
using KestrelProactor.Tests.Infrastructure;
using static KestrelProactor.Tests.Pipes.ConformanceData;

namespace KestrelProactor.Tests.Pipes;

/// <summary>PipeReader conformance: completing either side, with and without an exception, and reading afterwards.</summary>
public sealed class CompletionConformanceTests
{
    [Theory]
    [MemberData(nameof(ConformanceData.Modes), MemberType = typeof(ConformanceData))]
    public void WriterCompleted_DataLeft_EveryReadIsCompletedWithTheRest(InputMode mode)
    {
        using InputUnderTest input = InputUnderTest.Create(mode);
        input.Append(Ascii("abcdef"));
        input.CompleteWriter();

        ReadResult first = ReadNow(input.Reader);
        Assert.True(first.IsCompleted);
        Assert.Equal("abcdef", Text(first.Buffer));
        // Examined everything, but the writer is done: the next read does not wait.
        input.Reader.AdvanceTo(first.Buffer.GetPosition(2), first.Buffer.End);

        ReadResult second = ReadNow(input.Reader);
        Assert.True(second.IsCompleted);
        Assert.Equal("cdef", Text(second.Buffer));
        input.Reader.AdvanceTo(second.Buffer.End);

        ReadResult last = ReadNow(input.Reader);
        Assert.True(last.IsCompleted);
        Assert.True(last.Buffer.IsEmpty);
    }

    [Theory]
    [MemberData(nameof(ConformanceData.Modes), MemberType = typeof(ConformanceData))]
    public async Task WriterCompleted_WhileReadPending_CompletesIt(InputMode mode)
    {
        using InputUnderTest input = InputUnderTest.Create(mode);
        Task<ReadResult> read = input.Reader.ReadAsync().AsTask();

        input.CompleteWriter();

        ReadResult result = await read.DefaultTimeout();
        Assert.True(result.IsCompleted);
        Assert.True(result.Buffer.IsEmpty);
    }

    [Theory]
    [MemberData(nameof(ConformanceData.Modes), MemberType = typeof(ConformanceData))]
    public async Task WriterFailed_WhileReadPending_ReadThrowsItsException(InputMode mode)
    {
        using InputUnderTest input = InputUnderTest.Create(mode);
        Task<ReadResult> read = input.Reader.ReadAsync().AsTask();
        var error = new IOException("reset");

        input.CompleteWriter(error);

        Assert.Same(error, await Assert.ThrowsAsync<IOException>(() => read.DefaultTimeout()));
    }

    [Theory]
    [MemberData(nameof(ConformanceData.Modes), MemberType = typeof(ConformanceData))]
    public async Task WriterFailed_DataLeft_ReadThrowsAndKeepsThrowing(InputMode mode)
    {
        // As Pipe: the writer's error wins over bytes not read yet (the socket transport loses them on a reset too).
        using InputUnderTest input = InputUnderTest.Create(mode);
        input.Append(Ascii("abc"));
        var error = new IOException("reset");
        input.CompleteWriter(error);

        Assert.Same(error, await Assert.ThrowsAsync<IOException>(async () => await input.Reader.ReadAsync()));
        Assert.Same(error, await Assert.ThrowsAsync<IOException>(async () => await input.Reader.ReadAsync()));
    }

    [Theory]
    [MemberData(nameof(ConformanceData.Modes), MemberType = typeof(ConformanceData))]
    public void ReaderCompleted_WriterSeesIt(InputMode mode)
    {
        using InputUnderTest input = InputUnderTest.Create(mode);
        input.Append(Ascii("abc"));

        input.Reader.Complete();

        Assert.Equal(Appended.ReaderCompleted, input.Append(Ascii("def")));
        Assert.Null(input.ReaderErrorSeen);
    }

    [Theory]
    [MemberData(nameof(ConformanceData.Modes), MemberType = typeof(ConformanceData))]
    public void ReaderCompletedWithException_WriterSeesTheException(InputMode mode)
    {
        using InputUnderTest input = InputUnderTest.Create(mode);
        input.Append(Ascii("abc"));
        var error = new InvalidDataException("the application failed");

        input.Reader.Complete(error);

        Assert.Equal(Appended.ReaderCompleted, input.Append(Ascii("def")));
        Assert.Same(error, input.ReaderErrorSeen);
    }

    [Theory]
    [MemberData(nameof(ConformanceData.Modes), MemberType = typeof(ConformanceData))]
    public void ReaderCompleted_ReadsThrowAndCompleteAgainIsHarmless(InputMode mode)
    {
        using InputUnderTest input = InputUnderTest.Create(mode);
        input.Reader.Complete();
        input.Reader.Complete(new InvalidDataException("ignored"));

        Assert.Equal("Reading is not allowed after reader was completed.", Assert.Throws<InvalidOperationException>(() => input.Reader.ReadAsync()).Message);
        Assert.Throws<InvalidOperationException>(() => input.Reader.TryRead(out _));
    }

    [Theory]
    [MemberData(nameof(ConformanceData.Modes), MemberType = typeof(ConformanceData))]
    public void ReaderCompleted_WhilePaused_WriterIsLetGo(InputMode mode)
    {
        using InputUnderTest input = InputUnderTest.Create(mode, pauseThreshold: 100);
        Assert.Equal(Appended.Pause, input.Append(new byte[100]));

        input.Reader.Complete();
        input.RunScheduled();

        Assert.Equal(1, input.Resumes);
    }
}
