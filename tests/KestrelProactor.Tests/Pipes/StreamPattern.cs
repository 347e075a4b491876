using System.Buffers;

namespace KestrelProactor.Tests.Pipes;

/// <summary>Byte <c>i</c> of a test stream is a function of (seed, i), so any reordering, loss or repeat shows.</summary>
internal static class StreamPattern
{
    public static byte Byte(long index, int seed) => (byte)((index * 31) + (index >> 8) + seed);

    public static byte[] Create(long offset, int length, int seed)
    {
        var data = new byte[length];
        for (int i = 0; i < length; i++)
        {
            data[i] = Byte(offset + i, seed);
        }

        return data;
    }

    /// <summary>Checks that <paramref name="buffer"/> is bytes <paramref name="offset"/>.. of the pattern.</summary>
    public static void Assert(in ReadOnlySequence<byte> buffer, long offset, int seed)
    {
        long index = offset;
        foreach (ReadOnlyMemory<byte> memory in buffer)
        {
            ReadOnlySpan<byte> span = memory.Span;
            for (int i = 0; i < span.Length; i++, index++)
            {
                if (span[i] != Byte(index, seed))
                {
                    Xunit.Assert.Fail($"Byte {index} is {span[i]:x2}, expected {Byte(index, seed):x2}.");
                }
            }
        }
    }
}
