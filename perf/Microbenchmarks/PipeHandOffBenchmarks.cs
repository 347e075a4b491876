using System.Buffers;
using System.IO.Pipelines;
using BenchmarkDotNet.Attributes;

namespace KestrelProactor.Microbenchmarks;

/// <summary>
/// The hand-off every transport makes per receive: write into a <see cref="Pipe"/>, flush, and wake the reader
/// (Kestrel's HTTP parser). <c>UnsafePreferInlineScheduling</c> is the choice between
/// <see cref="PipeScheduler.Inline"/> (the reader continues on the writer's thread) and
/// <see cref="PipeScheduler.ThreadPool"/> (a thread hop per wake-up). This measures what that hop costs with
/// System.IO.Pipelines alone, so transport results can be read against it.
/// </summary>
[MemoryDiagnoser]
public class PipeHandOffBenchmarks
{
    private const int MessagesPerOperation = 1000;

    private Pipe _pipe = null!;
    private byte[] _message = null!;

    [Params("Inline", "ThreadPool")]
    public string ReaderScheduler { get; set; } = "Inline";

    [Params(64, 4096)]
    public int MessageSize { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        _message = new byte[MessageSize];
        Random.Shared.NextBytes(_message);
    }

    [IterationSetup]
    public void CreatePipe()
    {
        var scheduler = ReaderScheduler == "Inline" ? PipeScheduler.Inline : PipeScheduler.ThreadPool;
        _pipe = new Pipe(new PipeOptions(readerScheduler: scheduler, writerScheduler: PipeScheduler.Inline, useSynchronizationContext: false));
    }

    /// <summary>
    /// The writer flushes 1,000 messages one by one, as a transport does per receive; the reader wakes per flush
    /// (inline: before FlushAsync returns; thread pool: on a worker, batching when it falls behind).
    /// </summary>
    [Benchmark(OperationsPerInvoke = MessagesPerOperation)]
    public async Task WriteFlushRead()
    {
        var reader = ReadAllAsync(_pipe.Reader, (long)MessageSize * MessagesPerOperation);
        var writer = _pipe.Writer;
        for (int i = 0; i < MessagesPerOperation; i++)
        {
            _message.CopyTo(writer.GetMemory(MessageSize));
            writer.Advance(MessageSize);
            await writer.FlushAsync();
        }

        await writer.CompleteAsync();
        long read = await reader;
        if (read != (long)MessageSize * MessagesPerOperation)
        {
            throw new InvalidOperationException($"read {read} bytes, wrote {(long)MessageSize * MessagesPerOperation}");
        }
    }

    private static async Task<long> ReadAllAsync(PipeReader reader, long expected)
    {
        long total = 0;
        while (true)
        {
            var result = await reader.ReadAsync();
            total += result.Buffer.Length;
            reader.AdvanceTo(result.Buffer.End);
            if (result.IsCompleted || total >= expected)
            {
                await reader.CompleteAsync();
                return total;
            }
        }
    }
}
