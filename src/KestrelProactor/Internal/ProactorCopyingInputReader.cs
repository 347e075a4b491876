using System.IO.Pipelines;

namespace KestrelProactor.Internal;

/// <summary>
/// The application's reader of a copying input (IOCP, the io_uring basic tier): the pipe's own reader, which also
/// tells the connection when the application first reads. Until then the connection stops receiving at
/// <see cref="ProactorInputPipe.PreReadPauseThreshold"/> bytes (the lending input bounds itself the same way), so
/// a connection accepted while the thread pool is too busy to take it holds 64 KiB, not MaxReadBufferSize.
/// </summary>
internal sealed class ProactorCopyingInputReader : PipeReader
{
    private readonly PipeReader _inner;
    private readonly ProactorConnection _connection;
    private int _readStarted;

    public ProactorCopyingInputReader(PipeReader inner, ProactorConnection connection)
    {
        _inner = inner;
        _connection = connection;
    }

    /// <summary>Tests only: runs on the reading thread once the first read has ended the hold (to widen that window).</summary>
    internal static Action<ProactorConnection>? TestFirstReadHook { get; set; }

    /// <summary>True once the application has called ReadAsync or TryRead.</summary>
    public bool ReadStarted => Volatile.Read(ref _readStarted) != 0;

    // The read is issued before the hold ends: the first result holds what arrived before it, not what a resumed
    // receive adds while this thread is between the two calls.
    public override ValueTask<ReadResult> ReadAsync(CancellationToken cancellationToken = default)
    {
        ValueTask<ReadResult> read = _inner.ReadAsync(cancellationToken);
        SignalFirstRead();
        return read;
    }

    public override bool TryRead(out ReadResult result)
    {
        bool read = _inner.TryRead(out result);
        SignalFirstRead();
        return read;
    }

    public override void AdvanceTo(SequencePosition consumed) => _inner.AdvanceTo(consumed);

    public override void AdvanceTo(SequencePosition consumed, SequencePosition examined) => _inner.AdvanceTo(consumed, examined);

    public override void CancelPendingRead() => _inner.CancelPendingRead();

    public override void Complete(Exception? exception = null) => _inner.Complete(exception);

    public override ValueTask CompleteAsync(Exception? exception = null) => _inner.CompleteAsync(exception);

    private void SignalFirstRead()
    {
        // The exchange is a full fence before the connection reads whether it holds receives back (see
        // ProactorConnection.HoldUntilFirstRead, which fences the other way).
        if (Volatile.Read(ref _readStarted) == 0 && Interlocked.Exchange(ref _readStarted, 1) == 0)
        {
            _connection.OnApplicationFirstRead();
            TestFirstReadHook?.Invoke(_connection);
        }
    }
}
