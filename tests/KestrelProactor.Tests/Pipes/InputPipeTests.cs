using System.IO.Pipelines;
using KestrelProactor.Internal;
using KestrelProactor.Tests.Contract;
using static KestrelProactor.Tests.Pipes.ConformanceData;

namespace KestrelProactor.Tests.Pipes;

/// <summary>
/// What the transport's input does beyond Pipe's contract: memory held in proportion to bytes, whatever the packet
/// sizes; the resume that must not restart a paused writer; the bound before the application first reads.
/// </summary>
public sealed class InputPipeTests
{
    private const int RingBufferSize = 16 * 1024;

    [Fact]
    public void AppendReceived_OneBytePerReceive_FillsOneBlock()
    {
        // A peer sending a request head one byte per packet; Kestrel examines everything and consumes nothing.
        var lender = new FakeLender(256, RingBufferSize);
        var pool = new TrackingMemoryPool();
        var input = new ProactorInputPipe(lender, pool, new ManualScheduler(), inlineContinuations: true, pauseThreshold: 1024 * 1024, onResume: static () => { });
        ReadResult all = default;
        for (int i = 0; i < 1893; i++)
        {
            if (i > 0)
            {
                input.AdvanceTo(all.Buffer.Start, all.Buffer.End);
            }

            int id = lender.Receive(Pattern(i, 1, seed: 3));
            input.AppendReceived(lender.GetMemory(id).Span[..1], id, out bool taken);
            if (!taken)
            {
                lender.Return(id);
            }

            all = ReadNow(input);
        }

        // The input used to hold a lent 16 KiB buffer, and then a 4 KiB block, per receive: 1,893 of them.
        Assert.Equal(0, lender.Outstanding);
        Assert.Equal(1, pool.Outstanding);
        AssertPattern(all.Buffer, 0, seed: 3);
        Assert.Equal(1893, all.Buffer.Length);
        input.AdvanceTo(all.Buffer.End);
        input.Complete();
        Assert.Equal(0, pool.Outstanding);
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    public void AppendReceived_AnySizes_HeldMemoryWithinFiveTimesUnconsumedPlusOneBuffer(int seed)
    {
        var random = new Random(seed);
        var lender = new FakeLender(512, RingBufferSize);
        var pool = new TrackingMemoryPool();
        var input = new ProactorInputPipe(lender, pool, new ManualScheduler(), inlineContinuations: true, pauseThreshold: 0, onResume: static () => { });
        Assert.False(input.TryRead(out _));
        long unconsumed = 0;
        for (int i = 0; i < 3000; i++)
        {
            int size = random.Next(6) switch
            {
                0 => 1,
                1 => random.Next(2, 200),
                2 => random.Next(200, 4096),
                3 => 4096,
                4 => random.Next(4096, RingBufferSize),
                _ => RingBufferSize,
            };
            int id = lender.Receive(Pattern(unconsumed, size, seed));
            input.AppendReceived(lender.GetMemory(id).Span[..size], id, out bool taken);
            if (!taken)
            {
                lender.Return(id);
            }

            unconsumed += size;
            long held = ((long)lender.Outstanding * RingBufferSize) + ((long)pool.Outstanding * TrackingMemoryPool.BlockSize);
            Assert.True(held <= (5 * unconsumed) + RingBufferSize, $"After {i + 1} receives the input holds {held} bytes of memory for {unconsumed} bytes.");
            if (lender.Outstanding > 400)
            {
                break;
            }
        }

        ReadResult all = ReadNow(input);
        AssertPattern(all.Buffer, 0, seed);
        Assert.Equal(unconsumed, all.Buffer.Length);
        input.AdvanceTo(all.Buffer.End);
        input.Complete();
        Assert.Equal(0, lender.Outstanding);
        Assert.Equal(0, pool.Outstanding);
        Assert.Empty(lender.Errors);
    }

    [Fact]
    public void Resume_PausedAgainBeforeTheResumeRuns_DoesNotRestartTheWriter()
    {
        // The dispatcher runs a scheduled resume on its next pass; a multishot receive's last completion may land
        // first and pause the input again. Restarting receives then would read on while paused.
        using var input = new ProactorInputUnderTest(InputMode.Copy, pauseThreshold: 1000, writerScheduler: null);
        Assert.Equal(Appended.Pause, input.Append(new byte[1000]));
        ReadResult result = ReadNow(input.Reader);
        input.Reader.AdvanceTo(result.Buffer.End);
        Assert.Equal(1, input.Scheduler.Pending);

        Assert.Equal(Appended.Pause, input.Append(new byte[1000]));
        input.RunScheduled();

        Assert.Equal(0, input.Resumes);
        ReadResult again = ReadNow(input.Reader);
        input.Reader.AdvanceTo(again.Buffer.End);
        input.RunScheduled();
        Assert.Equal(1, input.Resumes);
    }

    [Fact]
    public void BeforeFirstRead_PausesAtPreReadThreshold_FirstReadResumes()
    {
        using var input = new ProactorInputUnderTest(InputMode.Copy, pauseThreshold: 1024 * 1024, writerScheduler: null);
        long written = 0;
        Appended appended;
        do
        {
            appended = input.Append(Pattern(written, 500, seed: 9));
            written += 500;
        }
        while (appended == Appended.Continue && written < 1024 * 1024);

        // Held at 64 KiB (not at MaxReadBufferSize) while nobody has read yet.
        Assert.Equal(Appended.Pause, appended);
        Assert.InRange(written, ProactorInputPipe.PreReadPauseThreshold, ProactorInputPipe.PreReadPauseThreshold + 499);

        // The first read lifts the bound to MaxReadBufferSize: the writer goes on at once.
        ReadResult result = ReadNow(input.Reader);
        input.RunScheduled();
        Assert.Equal(1, input.Resumes);
        AssertPattern(result.Buffer, 0, seed: 9);
        Assert.Equal(written, result.Buffer.Length);
        input.Reader.AdvanceTo(result.Buffer.Start);
        Assert.Equal(Appended.Continue, input.Append(Pattern(written, 500, seed: 9)));
    }

    [Theory]
    [InlineData(InputMode.Lent)]
    [InlineData(InputMode.Copy)]
    [InlineData(InputMode.Mixed)]
    public void Append_WhilePaused_IsHeldBackUntilTheReaderConsumes(InputMode mode)
    {
        // A paused Pipe writer writes nothing more; a multishot receive may still complete a few times before its
        // cancel lands. Those bytes are kept but not shown, so the reader sees about MaxReadBufferSize, as it would
        // on the socket transport.
        using var input = new ProactorInputUnderTest(mode, pauseThreshold: 1000, writerScheduler: null);
        Assert.Equal(Appended.Pause, input.Append(Pattern(0, 1000, seed: 5)));
        Assert.Equal(Appended.Pause, input.Append(Pattern(1000, 700, seed: 5)));
        input.CompleteWriter();

        ReadResult first = ReadNow(input.Reader);
        Assert.Equal(1000, first.Buffer.Length);
        Assert.False(first.IsCompleted);
        input.Reader.AdvanceTo(first.Buffer.GetPosition(600));

        ReadResult second = ReadNow(input.Reader);
        AssertPattern(second.Buffer, 600, seed: 5);
        Assert.Equal(1100, second.Buffer.Length);
        Assert.True(second.IsCompleted);
        input.Reader.AdvanceTo(second.Buffer.End);
        input.Reader.Complete();
        Assert.Equal(0, input.Lender.Outstanding);
        Assert.Equal(0, input.Pool.Outstanding);
    }
}
