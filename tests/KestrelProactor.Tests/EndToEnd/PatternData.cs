using System.Buffers.Binary;
using System.Security.Cryptography;

namespace KestrelProactor.Tests.EndToEnd;

/// <summary>
/// Deterministic, non-repeating test payloads: byte i of stream <c>seed</c> is a function of (seed, i), so either
/// side can produce or check any range without holding the whole payload, and a reordered or duplicated chunk
/// changes the checksum.
/// </summary>
internal static class PatternData
{
    public static void Fill(Span<byte> destination, long offset, int seed)
    {
        Span<byte> bytes = stackalloc byte[8];
        for (int i = 0; i < destination.Length;)
        {
            long position = offset + i;
            long word = position >> 3;
            BinaryPrimitives.WriteUInt64LittleEndian(bytes, Mix((ulong)word ^ ((ulong)(uint)seed << 40)));
            int start = (int)(position & 7);
            int count = Math.Min(8 - start, destination.Length - i);
            bytes.Slice(start, count).CopyTo(destination.Slice(i, count));
            i += count;
        }
    }

    public static byte[] Create(int length, int seed)
    {
        var data = new byte[length];
        Fill(data, 0, seed);
        return data;
    }

    /// <summary>The SHA-256 (lower-case hex) of the first <paramref name="length"/> bytes of stream <paramref name="seed"/>.</summary>
    public static string Sha256Hex(long length, int seed)
    {
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        var chunk = new byte[256 * 1024];
        for (long offset = 0; offset < length; offset += chunk.Length)
        {
            int count = (int)Math.Min(chunk.Length, length - offset);
            Fill(chunk.AsSpan(0, count), offset, seed);
            hash.AppendData(chunk, 0, count);
        }

        return Convert.ToHexStringLower(hash.GetHashAndReset());
    }

    public static async Task<(long Length, string Sha256)> HashStreamAsync(Stream stream, CancellationToken cancellationToken)
    {
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        var buffer = new byte[64 * 1024];
        long length = 0;
        int read;
        while ((read = await stream.ReadAsync(buffer, cancellationToken)) > 0)
        {
            hash.AppendData(buffer, 0, read);
            length += read;
        }

        return (length, Convert.ToHexStringLower(hash.GetHashAndReset()));
    }

    // SplitMix64's finalizer: cheap, and every input bit reaches every output bit.
    private static ulong Mix(ulong z)
    {
        z += 0x9E3779B97F4A7C15;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EB;
        return z ^ (z >> 31);
    }
}
