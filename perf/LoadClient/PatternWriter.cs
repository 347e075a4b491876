namespace KestrelProactor.Perf;

/// <summary>Writes the first N bytes of <see cref="DownloadPattern"/> to stdout, for uploads and for the expected hash.</summary>
internal static class PatternWriter
{
    public static async Task<int> RunAsync(ClientArguments options)
    {
        long total = options.GetInt64("bytes");
        await using var stdout = Console.OpenStandardOutput();
        byte[] block = DownloadPattern.Block;
        for (long written = 0; written < total;)
        {
            int chunk = (int)Math.Min(block.Length, total - written);
            await stdout.WriteAsync(block.AsMemory(0, chunk));
            written += chunk;
        }

        return 0;
    }
}
