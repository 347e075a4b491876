using System.IO.Pipelines;

namespace KestrelProactor.Internal;

/// <summary>
/// The application's end of a connection's output pipe. It writes through to the pipe and counts what the
/// application flushes, so a connection whose output read the dispatcher holds back (a streaming response, see
/// <see cref="ProactorConnection.OnApplicationFlushed"/>) is woken as soon as a send's worth is waiting rather than
/// when its delay runs out.
/// </summary>
internal sealed class ProactorOutputWriter(PipeWriter inner, ProactorConnection connection) : PipeWriter
{
    private long _unflushed;

    public override bool CanGetUnflushedBytes => inner.CanGetUnflushedBytes;

    public override long UnflushedBytes => inner.UnflushedBytes;

    public override void Advance(int bytes)
    {
        inner.Advance(bytes);
        _unflushed += bytes;
    }

    public override Memory<byte> GetMemory(int sizeHint = 0) => inner.GetMemory(sizeHint);

    public override Span<byte> GetSpan(int sizeHint = 0) => inner.GetSpan(sizeHint);

    public override ValueTask<FlushResult> FlushAsync(CancellationToken cancellationToken = default)
    {
        ValueTask<FlushResult> flush = inner.FlushAsync(cancellationToken);
        Flushed();
        return flush;
    }

    public override ValueTask<FlushResult> WriteAsync(ReadOnlyMemory<byte> source, CancellationToken cancellationToken = default)
    {
        ValueTask<FlushResult> write = inner.WriteAsync(source, cancellationToken);
        _unflushed += source.Length;
        Flushed();
        return write;
    }

    public override void CancelPendingFlush() => inner.CancelPendingFlush();

    public override void Complete(Exception? exception = null)
    {
        inner.Complete(exception);
        long flushed = _unflushed;
        _unflushed = 0;
        connection.OnApplicationFlushed(flushed, completed: true);
    }

    public override ValueTask CompleteAsync(Exception? exception = null)
    {
        Complete(exception);
        return default;
    }

    private void Flushed()
    {
        long flushed = _unflushed;
        _unflushed = 0;
        connection.OnApplicationFlushed(flushed);
    }
}
