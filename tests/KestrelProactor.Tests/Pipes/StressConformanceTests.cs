using System.IO.Pipelines;
using KestrelProactor.Tests.Infrastructure;
using static KestrelProactor.Tests.Pipes.ConformanceData;

namespace KestrelProactor.Tests.Pipes;

/// <summary>
/// PipeReader conformance under seeded random operations: appends of every size (one byte to several buffers),
/// reads (awaited, synchronous, TryRead), AdvanceTo anywhere legal, cancels and pauses, then the writer's end; every
/// byte is checked against the pattern. A failing seed replays exactly.
/// </summary>
public sealed class StressConformanceTests
{
    public static TheoryData<InputMode, int> ModesAndSeeds
    {
        get
        {
            var data = new TheoryData<InputMode, int>();
            foreach (InputMode mode in Enum.GetValues<InputMode>())
            {
                foreach (int seed in new[] { 1, 2, 3, 4, 5, 6 })
                {
                    data.Add(mode, seed);
                }
            }

            return data;
        }
    }

    [Theory]
    [MemberData(nameof(ModesAndSeeds))]
    public void RandomOperations_OneThread_EveryByteInOrder(InputMode mode, int seed)
    {
        var random = new Random(seed);
        long pause = random.Next(3) == 0 ? 0 : random.Next(64, 20_000);
        using InputUnderTest input = InputUnderTest.Create(mode, pause);
        PipeReader reader = input.Reader;
        long written = 0;
        long consumed = 0;
        bool paused = false;
        int resumes = 0;
        ValueTask<ReadResult>? pending = null;
        ReadResult? current = null;

        for (int step = 0; step < 3000; step++)
        {
            switch (random.Next(10))
            {
                case < 4 when !paused:
                    int size = random.Next(10) switch
                    {
                        < 5 => random.Next(1, 9),
                        < 8 => random.Next(9, 700),
                        _ => random.Next(700, 5000),
                    };
                    Appended appended = input.Append(Pattern(written, size, seed));
                    Assert.NotEqual(Appended.ReaderCompleted, appended);
                    written += size;
                    paused = appended == Appended.Pause;
                    break;
                case 4 or 5 when current is null && pending is null:
                    if (random.Next(3) == 0)
                    {
                        if (reader.TryRead(out ReadResult tried))
                        {
                            current = tried;
                        }
                    }
                    else
                    {
                        ValueTask<ReadResult> read = reader.ReadAsync();
                        if (read.IsCompleted)
                        {
                            current = Completed(read);
                        }
                        else
                        {
                            pending = read;
                        }
                    }

                    break;
                case 6 when current is ReadResult result:
                    // The result holds what there was when it was taken; more may have been appended since.
                    Assert.InRange(result.Buffer.Length, 0, written - consumed);
                    AssertPattern(result.Buffer, consumed, seed);
                    long length = result.Buffer.Length;
                    long consumeBy = random.Next(4) == 0 ? length : random.NextInt64(length + 1);
                    // Examined anywhere from consumed to the end, behind the previous examined position too.
                    long examineBy = random.Next(2) == 0 ? length : consumeBy + random.NextInt64(length - consumeBy + 1);
                    reader.AdvanceTo(result.Buffer.GetPosition(consumeBy), result.Buffer.GetPosition(examineBy));
                    consumed += consumeBy;
                    current = null;
                    break;
                case 7:
                    reader.CancelPendingRead();
                    break;
                default:
                    input.RunScheduled();
                    break;
            }

            if (pending is ValueTask<ReadResult> waiting && waiting.IsCompleted)
            {
                current = Completed(waiting);
                pending = null;
            }

            if (input.Resumes != resumes)
            {
                resumes = input.Resumes;
                paused = false;
            }
        }

        // The end: complete the writer and drain what is left.
        input.CompleteWriter();
        if (pending is ValueTask<ReadResult> last)
        {
            current = Completed(last);
        }

        while (true)
        {
            ReadResult result = current ?? ReadNow(reader);
            current = null;
            AssertPattern(result.Buffer, consumed, seed);
            // A result taken before the last appends holds less; the writer's end comes with everything.
            Assert.InRange(result.Buffer.Length, 0, written - consumed);
            Assert.True(!result.IsCompleted || result.Buffer.Length == written - consumed);
            consumed += result.Buffer.Length;
            reader.AdvanceTo(result.Buffer.End);
            if (result.IsCompleted)
            {
                break;
            }
        }

        Assert.Equal(written, consumed);
        reader.Complete();
        AssertNothingLeaked(input);
    }

    [Theory]
    [MemberData(nameof(ModesAndSeeds))]
    public async Task RandomOperations_WriterAndReaderThreads_EveryByteInOrder(InputMode mode, int seed)
    {
        const long Total = 2 * 1024 * 1024;
        // Resumes run inline (on the reader's thread, in AdvanceTo), as a dispatcher would run them soon after.
        using InputUnderTest input = InputUnderTest.Create(mode, pauseThreshold: 32 * 1024, new ManualScheduler(inline: true));
        PipeReader reader = input.Reader;
        using var stop = new CancellationTokenSource();

        Task writer = Task.Run(async () =>
        {
            var random = new Random(seed);
            long written = 0;
            while (written < Total)
            {
                int size = (int)Math.Min(Total - written, random.Next(10) < 6 ? random.Next(1, 64) : random.Next(64, 3000));
                Appended appended = input.Append(Pattern(written, size, seed));
                written += size;
                Assert.NotEqual(Appended.ReaderCompleted, appended);
                if (appended == Appended.Pause)
                {
                    Assert.True(await input.ResumeSignal.WaitAsync(TestTimeouts.Long), "The writer was never resumed.");
                }
            }

            input.CompleteWriter();
        });

        Task canceller = Task.Run(async () =>
        {
            while (!stop.IsCancellationRequested)
            {
                reader.CancelPendingRead();
                await Task.Delay(1);
            }
        });

        Task<long> readerTask = Task.Run(async () =>
        {
            var random = new Random(~seed);
            long consumed = 0;
            long examined = 0;
            while (true)
            {
                ReadResult result = await reader.ReadAsync().AsTask().LongTimeout();
                AssertPattern(result.Buffer, consumed, seed);
                long length = result.Buffer.Length;
                long consumeBy = result.IsCompleted || random.Next(3) == 0 ? length : random.NextInt64(length + 1);
                long examineTo = Math.Max(consumed + length, examined);
                reader.AdvanceTo(result.Buffer.GetPosition(consumeBy), result.Buffer.GetPosition(examineTo - consumed));
                consumed += consumeBy;
                examined = examineTo;
                if (result.IsCompleted && consumeBy == length)
                {
                    return consumed;
                }
            }
        });

        long read = await readerTask.WaitAsync(TestTimeouts.Long);
        await stop.CancelAsync();
        await Task.WhenAll(writer, canceller).WaitAsync(TestTimeouts.Long);
        Assert.Equal(Total, read);
        reader.Complete();
        AssertNothingLeaked(input);
    }

    private static void AssertNothingLeaked(InputUnderTest input)
    {
        if (input is ProactorInputUnderTest proactor)
        {
            Assert.Empty(proactor.Lender.Errors);
            Assert.Equal(0, proactor.Lender.Outstanding);
            Assert.Empty(proactor.Pool.CollectErrors());
            Assert.Equal(0, proactor.Pool.Outstanding);
        }
    }
}
