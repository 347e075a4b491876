using System.Buffers;
using System.IO.Pipelines;

namespace KestrelProactor.Tests.Receive;

/// <summary>
/// Sits between a connection's transport input and Kestrel (installed by connection middleware) and reports how far
/// into the stream each read reached, so a client can send its next byte only once the server has read the last:
/// every byte is then a receive of its own, without a sleep standing in for that. It passes positions through
/// unchanged, so the transport's input sees exactly what Kestrel does.
/// </summary>
internal sealed class ObservingPipeReader(PipeReader inner, ReadProgress progress) : PipeReader
{
    private ReadOnlySequence<byte> _lastBuffer;
    private long _consumed;

    public override async ValueTask<ReadResult> ReadAsync(CancellationToken cancellationToken = default)
    {
        ReadResult result = await inner.ReadAsync(cancellationToken);
        Observe(result);
        return result;
    }

    public override bool TryRead(out ReadResult result)
    {
        if (!inner.TryRead(out result))
        {
            return false;
        }

        Observe(result);
        return true;
    }

    public override void AdvanceTo(SequencePosition consumed) => AdvanceTo(consumed, consumed);

    public override void AdvanceTo(SequencePosition consumed, SequencePosition examined)
    {
        long consumedBytes = consumed.GetObject() is null ? 0 : _lastBuffer.Slice(_lastBuffer.Start, consumed).Length;
        inner.AdvanceTo(consumed, examined);
        _consumed += consumedBytes;
    }

    public override void CancelPendingRead() => inner.CancelPendingRead();

    public override void Complete(Exception? exception = null) => inner.Complete(exception);

    private void Observe(in ReadResult result)
    {
        _lastBuffer = result.Buffer;
        progress.Report(_consumed + result.Buffer.Length);
    }
}

/// <summary>How many bytes of a stream the server has read so far; a test awaits a count.</summary>
internal sealed class ReadProgress
{
    private readonly Lock _gate = new();
    private readonly List<(long Target, TaskCompletionSource Done)> _waiters = [];
    private long _seen;

    public long Seen
    {
        get
        {
            lock (_gate)
            {
                return _seen;
            }
        }
    }

    public void Report(long seen)
    {
        List<TaskCompletionSource> done = [];
        lock (_gate)
        {
            _seen = Math.Max(_seen, seen);
            _waiters.RemoveAll(w =>
            {
                if (w.Target > _seen)
                {
                    return false;
                }

                done.Add(w.Done);
                return true;
            });
        }

        done.ForEach(tcs => tcs.TrySetResult());
    }

    public Task WaitForAsync(long target)
    {
        lock (_gate)
        {
            if (_seen >= target)
            {
                return Task.CompletedTask;
            }

            var tcs = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            _waiters.Add((target, tcs));
            return tcs.Task;
        }
    }
}
