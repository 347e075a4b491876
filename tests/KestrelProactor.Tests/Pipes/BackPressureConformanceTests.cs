using System.IO.Pipelines;
using static KestrelProactor.Tests.Pipes.ConformanceData;

namespace KestrelProactor.Tests.Pipes;

/// <summary>
/// PipeReader conformance: the pause and resume thresholds (the transport's MaxReadBufferSize and half of it) count
/// bytes the reader has not examined, as Pipe counts them.
/// </summary>
public sealed class BackPressureConformanceTests
{
    [Theory]
    [MemberData(nameof(ConformanceData.Modes), MemberType = typeof(ConformanceData))]
    public void Append_ReachingPauseThreshold_Pauses(InputMode mode)
    {
        using InputUnderTest input = InputUnderTest.Create(mode, pauseThreshold: 1000);

        Assert.Equal(Appended.Continue, input.Append(new byte[999]));
        Assert.Equal(Appended.Pause, input.Append(new byte[1]));
    }

    [Theory]
    [MemberData(nameof(ConformanceData.Modes), MemberType = typeof(ConformanceData))]
    public void AdvanceTo_BelowResumeThreshold_ResumesOnceAndNotBefore(InputMode mode)
    {
        using InputUnderTest input = InputUnderTest.Create(mode, pauseThreshold: 1000);
        Assert.Equal(Appended.Pause, input.Append(new byte[1000]));

        ReadResult first = ReadNow(input.Reader);
        // 1000 - 500 = 500 unexamined: not below the resume threshold (500).
        input.Reader.AdvanceTo(first.Buffer.GetPosition(500));
        input.RunScheduled();
        Assert.Equal(0, input.Resumes);

        ReadResult second = ReadNow(input.Reader);
        input.Reader.AdvanceTo(second.Buffer.GetPosition(1));
        input.RunScheduled();
        Assert.Equal(1, input.Resumes);
    }

    [Theory]
    [MemberData(nameof(ConformanceData.Modes), MemberType = typeof(ConformanceData))]
    public void AdvanceTo_ExaminedWithoutConsuming_Resumes(InputMode mode)
    {
        // Kestrel with an incomplete request head examines everything and consumes nothing; the writer must go on.
        using InputUnderTest input = InputUnderTest.Create(mode, pauseThreshold: 1000);
        Assert.Equal(Appended.Pause, input.Append(new byte[1000]));

        ReadResult result = ReadNow(input.Reader);
        input.Reader.AdvanceTo(result.Buffer.Start, result.Buffer.End);
        input.RunScheduled();

        Assert.Equal(1, input.Resumes);
        Assert.Equal(Appended.Continue, input.Append(new byte[999]));
        Assert.Equal(Appended.Pause, input.Append(new byte[1]));
    }

    [Theory]
    [MemberData(nameof(ConformanceData.Modes), MemberType = typeof(ConformanceData))]
    public void AdvanceTo_ConsumedButExaminedLess_StillCountsExamined(InputMode mode)
    {
        using InputUnderTest input = InputUnderTest.Create(mode, pauseThreshold: 1000);
        Assert.Equal(Appended.Pause, input.Append(new byte[1000]));

        ReadResult result = ReadNow(input.Reader);
        input.Reader.AdvanceTo(result.Buffer.GetPosition(400), result.Buffer.GetPosition(499));
        input.RunScheduled();
        Assert.Equal(0, input.Resumes);

        ReadResult rest = ReadNow(input.Reader);
        input.Reader.AdvanceTo(rest.Buffer.Start, rest.Buffer.GetPosition(101));
        input.RunScheduled();
        Assert.Equal(1, input.Resumes);
    }

    [Theory]
    [MemberData(nameof(ConformanceData.Modes), MemberType = typeof(ConformanceData))]
    public void NoThreshold_NeverPauses(InputMode mode)
    {
        using InputUnderTest input = InputUnderTest.Create(mode, pauseThreshold: 0);
        // The input bounds what it holds until the application first reads (InputPipeTests covers that); a read
        // that finds nothing starts the application's reading here.
        Assert.False(input.Reader.TryRead(out _));

        for (int i = 0; i < 64; i++)
        {
            Assert.Equal(Appended.Continue, input.Append(new byte[4096]));
        }

        Assert.Equal(64 * 4096, ReadNow(input.Reader).Buffer.Length);
    }
}
