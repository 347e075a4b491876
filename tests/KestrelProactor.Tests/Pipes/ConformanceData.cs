using System.Buffers;
using System.IO.Pipelines;
using System.Text;
using KestrelProactor.Tests.Infrastructure;

namespace KestrelProactor.Tests.Pipes;

/// <summary>Theory data and small helpers shared by the PipeReader conformance tests.</summary>
internal static class ConformanceData
{
    /// <summary>Every implementation: Pipe first, so that a wrong expectation shows there.</summary>
    public static TheoryData<InputMode> Modes => new(Enum.GetValues<InputMode>());

    /// <summary>The transport's input only, for what Pipe does differently on purpose (each test says why).</summary>
    public static TheoryData<InputMode> InputModes => new(Enum.GetValues<InputMode>().Where(m => m != InputMode.Pipe));

    public static byte[] Ascii(string text) => Encoding.ASCII.GetBytes(text);

    public static string Text(in ReadOnlySequence<byte> buffer) => Encoding.ASCII.GetString(buffer.ToArray());

    public static byte PatternByte(long index, int seed) => StreamPattern.Byte(index, seed);

    public static byte[] Pattern(long offset, int length, int seed) => StreamPattern.Create(offset, length, seed);

    public static void AssertPattern(in ReadOnlySequence<byte> buffer, long offset, int seed) => StreamPattern.Assert(buffer, offset, seed);

    /// <summary>A read that must complete at once (the bytes, the cancel or the end are there).</summary>
    public static ReadResult ReadNow(PipeReader reader)
    {
        ValueTask<ReadResult> read = reader.ReadAsync();
        Assert.True(read.IsCompleted, "The read should have completed at once.");
        return read.GetAwaiter().GetResult();
    }

    /// <summary>The result of a read that has completed (checked).</summary>
    public static ReadResult Completed(ValueTask<ReadResult> read)
    {
        Assert.True(read.IsCompleted, "The read has not completed.");
        return read.GetAwaiter().GetResult();
    }

    public static Task<ReadResult> ReadWithTimeout(PipeReader reader, CancellationToken token = default)
        => reader.ReadAsync(token).AsTask().DefaultTimeout();
}
