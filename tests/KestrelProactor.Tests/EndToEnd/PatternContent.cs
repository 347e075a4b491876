using System.Net;

namespace KestrelProactor.Tests.EndToEnd;

/// <summary>
/// A request body streamed from <see cref="PatternData"/>. With <c>chunked</c> it reports no length, so HTTP/1.1
/// sends it with Transfer-Encoding: chunked.
/// </summary>
internal sealed class PatternContent(long length, int seed, bool chunked = false, int writeSize = 64 * 1024) : HttpContent
{
    protected override async Task SerializeToStreamAsync(Stream stream, TransportContext? context)
        => await SerializeToStreamAsync(stream, context, CancellationToken.None);

    protected override async Task SerializeToStreamAsync(Stream stream, TransportContext? context, CancellationToken cancellationToken)
    {
        var buffer = new byte[writeSize];
        for (long offset = 0; offset < length; offset += buffer.Length)
        {
            int count = (int)Math.Min(buffer.Length, length - offset);
            PatternData.Fill(buffer.AsSpan(0, count), offset, seed);
            await stream.WriteAsync(buffer.AsMemory(0, count), cancellationToken);
        }
    }

    protected override bool TryComputeLength(out long length1)
    {
        length1 = length;
        return !chunked;
    }
}
