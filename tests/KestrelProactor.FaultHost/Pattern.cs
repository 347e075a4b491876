namespace KestrelProactor.FaultHost;

/// <summary>The bytes every body carries: byte i of stream <c>key</c>, so a lost, repeated or moved byte is seen where it lands.</summary>
internal static class Pattern
{
    public static byte At(long key, long index)
    {
        ulong x = unchecked((ulong)key * 0x9E3779B97F4A7C15UL + (ulong)index);
        x ^= x >> 29;
        x = unchecked(x * 0xBF58476D1CE4E5B9UL);
        x ^= x >> 32;
        return (byte)x;
    }

    public static void Fill(long key, long offset, Span<byte> destination)
    {
        for (int i = 0; i < destination.Length; i++)
        {
            destination[i] = At(key, offset + i);
        }
    }

    /// <summary>The first index in <paramref name="data"/> (at <paramref name="offset"/> of the stream) that is wrong, or -1.</summary>
    public static long FirstMismatch(long key, long offset, ReadOnlySpan<byte> data)
    {
        for (int i = 0; i < data.Length; i++)
        {
            if (data[i] != At(key, offset + i))
            {
                return offset + i;
            }
        }

        return -1;
    }
}

/// <summary>Bytes that are not the ones sent: never excused, whatever fault touched the connection.</summary>
internal sealed class WrongBytesException(string message) : Exception(message);
