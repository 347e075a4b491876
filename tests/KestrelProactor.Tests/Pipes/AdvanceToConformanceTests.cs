using System.IO.Pipelines;
using static KestrelProactor.Tests.Pipes.ConformanceData;

namespace KestrelProactor.Tests.Pipes;

/// <summary>
/// PipeReader conformance, AdvanceTo: each rule runs against System.IO.Pipelines' Pipe and the transport's input in
/// every mode, so an expectation that is wrong fails on Pipe too.
/// </summary>
public sealed class AdvanceToConformanceTests
{
    [Theory]
    [MemberData(nameof(ConformanceData.Modes), MemberType = typeof(ConformanceData))]
    public void AdvanceTo_WithoutRead_Throws(InputMode mode)
    {
        using InputUnderTest input = InputUnderTest.Create(mode);
        input.Append(Ascii("abc"));
        ReadResult result = ReadNow(input.Reader);
        input.Reader.AdvanceTo(result.Buffer.Start);

        var error = Assert.Throws<InvalidOperationException>(() => input.Reader.AdvanceTo(result.Buffer.End));
        Assert.Equal("No reading operation to complete.", error.Message);
    }

    [Theory]
    [MemberData(nameof(ConformanceData.Modes), MemberType = typeof(ConformanceData))]
    public void AdvanceTo_SameEndTwice_ThrowsNoReadToComplete(InputMode mode)
    {
        using InputUnderTest input = InputUnderTest.Create(mode);
        input.Append(Ascii("abc"));
        ReadResult first = ReadNow(input.Reader);
        input.Reader.AdvanceTo(first.Buffer.End);
        input.Append(Ascii("def"));

        Assert.Throws<InvalidOperationException>(() => input.Reader.AdvanceTo(first.Buffer.End));
    }

    [Theory]
    [MemberData(nameof(ConformanceData.InputModes), MemberType = typeof(ConformanceData))]
    public void AdvanceTo_SameEndTwice_LeavesNewBytesUnread(InputMode mode)
    {
        // Pipe throws too, but only after acting on the stale position: it returns the segments from its head on
        // and loses "def". The input checks before it changes anything (it used to consume "def" silently).
        using InputUnderTest input = InputUnderTest.Create(mode);
        input.Append(Ascii("abc"));
        ReadResult first = ReadNow(input.Reader);
        input.Reader.AdvanceTo(first.Buffer.End);
        input.Append(Ascii("def"));
        Assert.Throws<InvalidOperationException>(() => input.Reader.AdvanceTo(first.Buffer.End));

        ReadResult next = ReadNow(input.Reader);
        Assert.Equal("def", Text(next.Buffer));
    }

    [Theory]
    [MemberData(nameof(ConformanceData.Modes), MemberType = typeof(ConformanceData))]
    public void AdvanceTo_ExaminedBeforeConsumed_Throws(InputMode mode)
    {
        using InputUnderTest input = InputUnderTest.Create(mode);
        input.Append(Ascii("abcdef"));
        ReadResult result = ReadNow(input.Reader);

        var error = Assert.Throws<InvalidOperationException>(() => input.Reader.AdvanceTo(result.Buffer.GetPosition(4), result.Buffer.GetPosition(2)));
        Assert.Equal("The examined position must be greater than or equal to the consumed position.", error.Message);
    }

    [Theory]
    [MemberData(nameof(ConformanceData.Modes), MemberType = typeof(ConformanceData))]
    public void AdvanceTo_ExaminedGoesBackwards_IsAllowedAndCountsTheBytesAgain(InputMode mode)
    {
        // Pipe (.NET 10) accepts an examined position behind the previous one; the bytes after it count as
        // unexamined again, for back-pressure as for the next read.
        using InputUnderTest input = InputUnderTest.Create(mode, pauseThreshold: 100);
        Assert.Equal(Appended.Continue, input.Append(new byte[99]));
        ReadResult first = ReadNow(input.Reader);
        input.Reader.AdvanceTo(first.Buffer.Start, first.Buffer.GetPosition(40));
        ReadResult second = ReadNow(input.Reader);

        input.Reader.AdvanceTo(second.Buffer.Start, second.Buffer.GetPosition(10));

        // 89 unexamined again: 20 more reach the pause threshold (59 + 20 would not).
        Assert.Equal(Appended.Pause, input.Append(new byte[20]));
        ReadResult third = ReadNow(input.Reader);
        input.Reader.AdvanceTo(third.Buffer.Start, third.Buffer.GetPosition(69));
        input.RunScheduled();
        Assert.Equal(0, input.Resumes);
        ReadResult fourth = ReadNow(input.Reader);
        input.Reader.AdvanceTo(fourth.Buffer.Start, fourth.Buffer.GetPosition(70));
        input.RunScheduled();
        Assert.Equal(1, input.Resumes);
    }

    [Theory]
    [MemberData(nameof(ConformanceData.Modes), MemberType = typeof(ConformanceData))]
    public void AdvanceTo_PositionFromOlderReadStillBuffered_IsAccepted(InputMode mode)
    {
        using InputUnderTest input = InputUnderTest.Create(mode);
        input.Append(Ascii("abc"));
        ReadResult first = ReadNow(input.Reader);
        input.Reader.AdvanceTo(first.Buffer.Start, first.Buffer.End);
        input.Append(Ascii("def"));
        ReadNow(input.Reader);

        input.Reader.AdvanceTo(first.Buffer.GetPosition(1));

        Assert.Equal("bcdef", Text(ReadNow(input.Reader).Buffer));
    }

    [Theory]
    [MemberData(nameof(ConformanceData.InputModes), MemberType = typeof(ConformanceData))]
    public void AdvanceTo_PositionIntoConsumedSegmentAfterNewRead_Throws(InputMode mode)
    {
        // Pipe takes such a position for its own: it returns its segments from the head on and silently loses the
        // unread "def" (its segments are reused, so it cannot tell). The input never reuses a segment, and a
        // consumed one is out of its chain for good.
        using InputUnderTest input = InputUnderTest.Create(mode);
        input.Append(Ascii("abc"));
        ReadResult first = ReadNow(input.Reader);
        input.Reader.AdvanceTo(first.Buffer.End);
        input.Append(Ascii("def"));
        ReadResult second = ReadNow(input.Reader);

        var error = Assert.Throws<InvalidOperationException>(() => input.Reader.AdvanceTo(first.Buffer.End));
        Assert.Equal("The PipeReader has already advanced past the provided position.", error.Message);
        input.Reader.AdvanceTo(second.Buffer.Start);
        Assert.Equal("def", Text(ReadNow(input.Reader).Buffer));
    }

    [Theory]
    [MemberData(nameof(ConformanceData.InputModes), MemberType = typeof(ConformanceData))]
    public void AdvanceTo_ConsumedBehindHead_Throws(InputMode mode)
    {
        // Pipe moves its head back to such a position and shows consumed bytes again; with lent buffers the bytes
        // behind the head may already be back in the kernel, so the input refuses it.
        using InputUnderTest input = InputUnderTest.Create(mode);
        input.Append(Ascii("abcdef"));
        ReadResult first = ReadNow(input.Reader);
        input.Reader.AdvanceTo(first.Buffer.GetPosition(3), first.Buffer.End);
        input.Append(Ascii("ghi"));
        ReadResult second = ReadNow(input.Reader);

        var error = Assert.Throws<InvalidOperationException>(() => input.Reader.AdvanceTo(first.Buffer.Start, second.Buffer.End));
        Assert.Equal("The PipeReader has already advanced past the provided position.", error.Message);
        input.Reader.AdvanceTo(second.Buffer.GetPosition(1), second.Buffer.End);
        input.Append(Ascii("j"));
        Assert.Equal("efghij", Text(ReadNow(input.Reader).Buffer));
    }

    [Theory]
    [MemberData(nameof(ConformanceData.Modes), MemberType = typeof(ConformanceData))]
    public void ReadAsync_SecondBeforeAdvanceTo_Throws(InputMode mode)
    {
        using InputUnderTest input = InputUnderTest.Create(mode);
        input.Append(Ascii("abc"));
        ReadNow(input.Reader);

        var error = Assert.Throws<InvalidOperationException>(() => input.Reader.ReadAsync());
        Assert.Equal("Reading is already in progress.", error.Message);
    }

    [Theory]
    [MemberData(nameof(ConformanceData.Modes), MemberType = typeof(ConformanceData))]
    public void AdvanceTo_AfterReaderCompleted_Throws(InputMode mode)
    {
        using InputUnderTest input = InputUnderTest.Create(mode);
        input.Append(Ascii("abc"));
        ReadResult result = ReadNow(input.Reader);
        input.Reader.Complete();

        var error = Assert.Throws<InvalidOperationException>(() => input.Reader.AdvanceTo(result.Buffer.End));
        Assert.Equal("Reading is not allowed after reader was completed.", error.Message);
    }

    [Theory]
    [MemberData(nameof(ConformanceData.Modes), MemberType = typeof(ConformanceData))]
    public void AdvanceTo_ConsumedPart_NextReadStartsThere(InputMode mode)
    {
        using InputUnderTest input = InputUnderTest.Create(mode);
        input.Append(Ascii("abcdef"));
        ReadResult first = ReadNow(input.Reader);
        input.Reader.AdvanceTo(first.Buffer.GetPosition(2));

        // Not everything was examined: the next read returns at once, with what is left.
        Assert.Equal("cdef", Text(ReadNow(input.Reader).Buffer));
    }

    [Theory]
    [MemberData(nameof(ConformanceData.Modes), MemberType = typeof(ConformanceData))]
    public async Task AdvanceTo_ExaminedEverything_NextReadWaitsForNewBytes(InputMode mode)
    {
        using InputUnderTest input = InputUnderTest.Create(mode);
        input.Append(Ascii("abc"));
        ReadResult first = ReadNow(input.Reader);
        input.Reader.AdvanceTo(first.Buffer.Start, first.Buffer.End);

        ValueTask<ReadResult> next = input.Reader.ReadAsync();
        Assert.False(next.IsCompleted);
        input.Append(Ascii("d"));
        Assert.Equal("abcd", Text((await next.AsTask().WaitAsync(Infrastructure.TestTimeouts.Default)).Buffer));
    }

    [Theory]
    [MemberData(nameof(ConformanceData.Modes), MemberType = typeof(ConformanceData))]
    public void AdvanceTo_EmptyResultsPositions_AfterBytesArrived_ConsumeNothing(InputMode mode)
    {
        // What Kestrel does after a cancelled read: AdvanceTo(buffer.Start, buffer.End) of an empty result, and bytes
        // may have arrived meanwhile. The input's empty result used to point into an empty array, and the cast of
        // that array to its segment type threw InvalidCastException here.
        using InputUnderTest input = InputUnderTest.Create(mode);
        input.Reader.CancelPendingRead();
        ReadResult cancelled = ReadNow(input.Reader);
        Assert.True(cancelled.IsCanceled);
        Assert.True(cancelled.Buffer.IsEmpty);
        Assert.Null(cancelled.Buffer.Start.GetObject());
        input.Append(Ascii("abc"));

        input.Reader.AdvanceTo(cancelled.Buffer.Start, cancelled.Buffer.End);

        ReadResult next = ReadNow(input.Reader);
        Assert.False(next.IsCanceled);
        Assert.Equal("abc", Text(next.Buffer));
    }

    [Theory]
    [MemberData(nameof(ConformanceData.Modes), MemberType = typeof(ConformanceData))]
    public void Positions_AcrossSegments_AreContinuous(InputMode mode)
    {
        using InputUnderTest input = InputUnderTest.Create(mode);
        // Sizes around the input's 512-byte buffers and the pool's 4 KiB blocks, each a receive of its own.
        int[] sizes = [1, 511, 512, 513, 4095, 1, 4097, 3];
        long written = 0;
        foreach (int size in sizes)
        {
            input.Append(Pattern(written, size, seed: 7));
            written += size;
        }

        long consumed = 0;
        foreach (long step in new long[] { 1, 510, 2, 4096, 777, 3000 })
        {
            ReadResult result = ReadNow(input.Reader);
            Assert.Equal(written - consumed, result.Buffer.Length);
            AssertPattern(result.Buffer, consumed, seed: 7);
            SequencePosition position = result.Buffer.GetPosition(step);
            Assert.Equal(step, result.Buffer.Slice(result.Buffer.Start, position).Length);
            Assert.Equal(result.Buffer.Length - step, result.Buffer.Slice(position).Length);
            input.Reader.AdvanceTo(position, result.Buffer.End);
            consumed += step;
            input.Append(Pattern(written, 1, seed: 7));
            written++;
        }

        ReadResult last = ReadNow(input.Reader);
        AssertPattern(last.Buffer, consumed, seed: 7);
        Assert.Equal(written - consumed, last.Buffer.Length);
    }
}
