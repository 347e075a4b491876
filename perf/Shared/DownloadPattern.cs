namespace KestrelProactor.Perf;

/// <summary>
/// The deterministic bytes that <c>/bytes/{n}</c> serves and the load client uploads: byte <c>i</c> is
/// <c>i % 251</c>. 251 is prime, so no buffer size a transport uses (powers of two, 4 KiB pages) is a multiple
/// of it: a chunk that is lost, repeated or reordered changes the SHA-256 the driver compares.
/// </summary>
internal static class DownloadPattern
{
    public const int Period = 251;

    /// <summary>One block of whole periods (251 x 256 = 64,256 bytes), so writing it back to back keeps the sequence.</summary>
    public static readonly byte[] Block = CreateBlock(Period * 256);

    private static byte[] CreateBlock(int length)
    {
        var block = new byte[length];
        for (int i = 0; i < block.Length; i++)
        {
            block[i] = (byte)(i % Period);
        }

        return block;
    }
}
