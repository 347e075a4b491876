using System.IO.Pipelines;
using System.Threading.Tasks.Sources;

namespace KestrelProactor.Internal;

/// <summary>
/// The read awaitable: a read that cannot return at once waits on <c>_readSource</c>, which only says "look now".
/// The dispatcher (new bytes, the writer's end), <see cref="CancelPendingRead"/> or the read's token completes it,
/// outside the lock; the result is built in GetResult, under the lock, from what there is then. A fired token makes
/// that read throw OperationCanceledException, as Pipe does, after the result was built and its cancel observed.
/// </summary>
internal sealed partial class ProactorInputPipe
{
    private ManualResetValueTaskSourceCore<bool> _readSource;
    private CancellationTokenRegistration _readRegistration;
    private CancellationToken _readToken;
    private bool _readPending;

    // Under _sync: true when a pending read must be completed now (the caller does, outside the lock).
    private bool TryTakePendingRead()
    {
        if (_readPending && IsSignaled)
        {
            _readPending = false;
            NoteReadWoken();
            return true;
        }

        return false;
    }

    private void OnReadTokenCancelled()
    {
        lock (_sync)
        {
            // A late callback of an earlier read's token finds no read, or a read with another token.
            if (!_readPending || !_readToken.IsCancellationRequested)
            {
                return;
            }

            _readPending = false;
            NoteReadWoken();
            _cancelRequested = true;
            _signaled = true;
        }

        _readSource.SetResult(true);
    }

    ReadResult IValueTaskSource<ReadResult>.GetResult(short token)
    {
        _readSource.GetResult(token);
        CancellationTokenRegistration registration = default;
        CancellationToken readToken = default;
        ReadResult result;
        try
        {
            lock (_sync)
            {
                registration = _readRegistration;
                readToken = _readToken;
                _readRegistration = default;
                _readToken = default;
                result = TakeResult();
            }
        }
        finally
        {
            // Outside the lock: disposing waits for a callback that is running, and the callback takes the lock.
            registration.Dispose();
        }

        if (result.IsCanceled)
        {
            readToken.ThrowIfCancellationRequested();
        }

        return result;
    }

    ValueTaskSourceStatus IValueTaskSource<ReadResult>.GetStatus(short token)
    {
        ValueTaskSourceStatus status = _readSource.GetStatus(token);
        return status == ValueTaskSourceStatus.Succeeded && Volatile.Read(ref _writerError) is not null
            ? ValueTaskSourceStatus.Faulted
            : status;
    }

    void IValueTaskSource<ReadResult>.OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags)
        => _readSource.OnCompleted(continuation, state, token, flags);
}
