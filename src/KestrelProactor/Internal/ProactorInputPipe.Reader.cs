using System.Buffers;
using System.Diagnostics;
using System.IO.Pipelines;

namespace KestrelProactor.Internal;

/// <summary>
/// The reader half, modelled on Pipe's reader so that Kestrel sees the same behaviour as on its socket transport:
/// <list type="bullet">
/// <item><c>_signaled</c> is Pipe's "reader awaitable completed": set by new bytes, the writer's completion and a
/// cancel; cleared by an AdvanceTo that examined everything while the writer is still open. A read returns at once
/// while it or a cancel is pending, and waits otherwise.</item>
/// <item>A read result is built when it is consumed (the synchronous return, or GetResult), never when the wait
/// ends: it holds every byte there is by then, and an empty one is <c>default</c>, whose positions any later
/// AdvanceTo accepts.</item>
/// <item><c>_readState</c> is Pipe's operation state: a result hands out Reading (a cancelled one Tentative), and
/// AdvanceTo ends it; a second read before AdvanceTo, or an AdvanceTo with no read to end, throws. Positions are
/// checked before anything changes, so a stale or repeated AdvanceTo never consumes bytes the reader has not seen;
/// segments are never reused, so a position into a consumed segment stays recognisably stale. As on Pipe (.NET 10),
/// examined may go back: the bytes after it count as unexamined again.</item>
/// </list>
/// Where this differs from Pipe, on purpose: a second ReadAsync while one is pending throws at once and leaves the
/// first read alone (Pipe fails the whole pipe when the second is awaited); a consumed position behind the
/// current head, into a consumed segment, or past the end of the last result, throws (Pipe moves its head there,
/// showing consumed bytes again or dropping unread ones).
/// </summary>
internal sealed partial class ProactorInputPipe
{
    private const string ReadingAfterCompleted = "Reading is not allowed after reader was completed.";
    private const string ReadingInProgress = "Reading is already in progress.";
    private const string NoReadToComplete = "No reading operation to complete.";
    private const string ExaminedBeforeConsumed = "The examined position must be greater than or equal to the consumed position.";
    private const string AdvancedPast = "The PipeReader has already advanced past the provided position.";
    private const string ConcurrentReads = "Concurrent reads or writes are not supported.";

    internal string DescribeForTests()
    {
        long now = Stopwatch.GetTimestamp();
        long pendingSince = _readPendingSince;
        long wokenAt = _readWokenAt;
        return $"end={_end} examined={_examined} readEnd={_readEnd} readPending={_readPending} signaled={_signaled} state={_readState} lent={_lentCount} paused={_paused} " +
               $"readWaitNow={(pendingSince == 0 ? 0 : ProactorConnection.Milliseconds(now - pendingSince))}ms readWaitMax={ProactorConnection.Milliseconds(_longestReadWait)}ms " +
               $"wokenNotTakenFor={(wokenAt == 0 ? 0 : ProactorConnection.Milliseconds(now - wokenAt))}ms wakeToResultMax={ProactorConnection.Milliseconds(_longestWakeToResult)}ms " +
               $"lastResultAgo={(_lastResultAt == 0 ? -1 : ProactorConnection.Milliseconds(now - _lastResultAt))}ms";
    }

    // Read timing, for a stalled test's failure message (Stopwatch timestamps; read racily): since when a read has
    // waited for data, when it was woken and not yet taken, the longest of each wait, when the last result was built.
    private long _readPendingSince;
    private long _readWokenAt;
    private long _longestReadWait;
    private long _longestWakeToResult;
    private long _lastResultAt;

    // Under _sync or just after: a pending read is about to be completed.
    private void NoteReadWoken()
    {
        if (!ProactorConnection.TimingForTests)
        {
            return;
        }

        long now = Stopwatch.GetTimestamp();
        if (_readPendingSince != 0)
        {
            _longestReadWait = Math.Max(_longestReadWait, now - _readPendingSince);
            _readPendingSince = 0;
        }

        _readWokenAt = now;
    }

    private bool _signaled;
    private bool _cancelRequested;
    private bool _readStarted;
    private ReadState _readState;

    // The reader examined everything before this index; _readEnd is where the last result ended.
    private long _examined;
    private long _readEnd;

    [Flags]
    private enum ReadState
    {
        None = 0,

        /// <summary>A result was handed out; AdvanceTo must follow before the next read.</summary>
        Reading = 1,

        /// <summary>A cancelled result, or a TryRead that found nothing: another read may follow at once.</summary>
        Tentative = 2,
    }

    public override ValueTask<ReadResult> ReadAsync(CancellationToken cancellationToken = default)
    {
        if (cancellationToken.IsCancellationRequested)
        {
            ThrowIfReaderCompleted();
            return ValueTask.FromCanceled<ReadResult>(cancellationToken);
        }

        bool resume;
        ValueTask<ReadResult> read;
        lock (_sync)
        {
            ThrowIfReaderCompleted();
            if (_readPending)
            {
                throw new InvalidOperationException(ConcurrentReads);
            }

            resume = OnReadUnderLock();
            if (IsSignaled)
            {
                read = new ValueTask<ReadResult>(TakeResult());
            }
            else
            {
                _readPending = true;
                if (ProactorConnection.TimingForTests)
                {
                    _readPendingSince = Stopwatch.GetTimestamp();
                }

                _readSource.Reset();
                if (cancellationToken.CanBeCanceled)
                {
                    // As Pipe: a fired token completes the read, which then throws OperationCanceledException
                    // (CancelPendingRead instead returns a result marked IsCanceled).
                    _readToken = cancellationToken;
                    _readRegistration = cancellationToken.UnsafeRegister(static state => ((ProactorInputPipe)state!).OnReadTokenCancelled(), this);
                }

                read = new ValueTask<ReadResult>(this, _readSource.Version);
            }
        }

        ScheduleResume(resume);
        return read;
    }

    public override bool TryRead(out ReadResult result)
    {
        bool resume;
        bool found;
        lock (_sync)
        {
            ThrowIfReaderCompleted();
            resume = OnReadUnderLock();
            // As Pipe: bytes not examined yet, or a signal (new bytes, the writer's end, a cancel).
            found = _end - _examined > 0 || IsSignaled;
            if (found)
            {
                result = TakeResult();
            }
            else
            {
                if (_readPending)
                {
                    throw new InvalidOperationException(ReadingInProgress);
                }

                _readState |= ReadState.Tentative;
                result = default;
            }
        }

        ScheduleResume(resume);
        return found;
    }

    public override void AdvanceTo(SequencePosition consumed) => AdvanceTo(consumed, consumed);

    public override void AdvanceTo(SequencePosition consumed, SequencePosition examined)
    {
        ProactorInputSegment? released = null;
        bool resume = false;
        lock (_sync)
        {
            ThrowIfReaderCompleted();
            if (_readState == ReadState.None)
            {
                // Repeated or stale: without this, AdvanceTo(oldEnd) twice consumed bytes the reader never saw.
                throw new InvalidOperationException(NoReadToComplete);
            }

            long head = ConsumedIndex;
            bool consumedGiven = consumed.GetObject() is not null;
            bool examinedGiven = examined.GetObject() is not null;
            // A default position (the empty result's) consumes or examines nothing.
            long consumedAt = consumedGiven ? Resolve(consumed) : head;
            long examinedAt = examinedGiven ? Resolve(examined) : Math.Max(_examined, consumedAt);
            if (consumedGiven && examinedGiven && examinedAt < consumedAt)
            {
                throw new InvalidOperationException(ExaminedBeforeConsumed);
            }

            if (consumedAt < head)
            {
                throw new InvalidOperationException(AdvancedPast);
            }

            // As Pipe: examined everything means up to the bytes there are now, not to the end of the last result.
            bool examinedEverything = examinedGiven ? examinedAt == _end : _head is null;
            _readState = ReadState.None;

            while (_head is not null && _head.End <= consumedAt)
            {
                ProactorInputSegment done = _head;
                _head = done.NextSegment;
                _headIndex = 0;
                Unlink(done, ref released);
            }

            if (_head is null)
            {
                _tail = null;
            }
            else
            {
                _headIndex = (int)(consumedAt - _head.RunningIndex);
            }

            // As Pipe, examined may go back: the bytes after it count as unexamined again (for back-pressure too).
            _examined = examinedAt;
            if (examinedEverything && !_writerCompleted)
            {
                _signaled = false;
            }

            if (_paused && _end - _examined < _resumeThreshold)
            {
                resume = TryResume();
            }
        }

        ReleaseChain(released);
        ScheduleResume(resume);
    }

    public override void CancelPendingRead()
    {
        bool complete;
        lock (_sync)
        {
            _cancelRequested = true;
            _signaled = true;
            complete = TryTakePendingRead();
        }

        if (complete)
        {
            _readSource.SetResult(true);
        }
    }

    public override void Complete(Exception? exception = null)
    {
        ProactorInputSegment? released = null;
        bool resume;
        lock (_sync)
        {
            if (_readerCompleted)
            {
                return;
            }

            _readerCompleted = true;
            // The connection reads this when it next appends or resumes, and reports it as the socket transport does.
            _readerError = exception;
            _readState = ReadState.None;
            for (ProactorInputSegment? s = _head; s is not null;)
            {
                ProactorInputSegment? next = s.NextSegment;
                Unlink(s, ref released);
                s = next;
            }

            for (ProactorInputSegment? s = _heldHead; s is not null;)
            {
                ProactorInputSegment? next = s.NextInChain;
                Unlink(s, ref released);
                s = next;
            }

            _head = _tail = null;
            _heldHead = _heldTail = null;
            resume = _paused;
            _paused = false;
        }

        ReleaseChain(released);
        // A paused connection waits for a resume to see that the reader is gone (its next append would say so).
        ScheduleResume(resume);
    }

    // As Pipe's reader awaitable: a cancel completes a read even after an AdvanceTo re-armed the wait.
    private bool IsSignaled => _signaled || _cancelRequested;

    private long ConsumedIndex => _head is null ? _end : _head.RunningIndex + _headIndex;

    // Under _sync: the index a position stands for; throws for a position this chain no longer holds.
    private long Resolve(SequencePosition position)
    {
        // A segment out of the chain (consumed: its memory may hold other bytes now) or another pipe's.
        if (position.GetObject() is not ProactorInputSegment segment || segment.Pipe != this)
        {
            throw new InvalidOperationException(AdvancedPast);
        }

        int index = position.GetInteger();
        long at = segment.RunningIndex + index;
        if ((uint)index > (uint)segment.Length || at > _readEnd)
        {
            // Past the end of the last result (or of the segment): not a position the application was given.
            throw new InvalidOperationException(AdvancedPast);
        }

        return at;
    }

    // Under _sync: the first read of the application lifts the lower threshold used until then; true to resume.
    private bool OnReadUnderLock()
    {
        if (_readStarted)
        {
            return false;
        }

        _readStarted = true;
        SetThresholds(_configuredPauseThreshold);
        return _paused && _end - _examined < _resumeThreshold && TryResume();
    }

    private void ScheduleResume(bool resume)
    {
        if (resume)
        {
            _dispatcher.Schedule(s_runResume, this);
        }
    }

    // Under _sync: builds the result the reader is about to get, as Pipe does (the writer's error first).
    private ReadResult TakeResult()
    {
        if (_writerCompleted)
        {
            _writerError?.Throw();
        }

        // Held bytes come first: the end shows once they have.
        bool completed = _writerCompleted && _heldHead is null;

        if ((_readState & ReadState.Reading) != 0)
        {
            throw new InvalidOperationException(ReadingInProgress);
        }

        bool canceled = _cancelRequested;
        _cancelRequested = false;
        _readState |= canceled ? ReadState.Tentative : ReadState.Reading;
        _readEnd = _end;
        if (ProactorConnection.TimingForTests)
        {
            long now = Stopwatch.GetTimestamp();
            if (_readWokenAt != 0)
            {
                _longestWakeToResult = Math.Max(_longestWakeToResult, now - _readWokenAt);
                _readWokenAt = 0;
            }

            _lastResultAt = now;
        }

        ReadOnlySequence<byte> buffer = _head is null ? default : new ReadOnlySequence<byte>(_head, _headIndex, _tail!, _tail!.Length);
        return new ReadResult(buffer, canceled, completed);
    }

    private void ThrowIfReaderCompleted()
    {
        if (_readerCompleted)
        {
            throw new InvalidOperationException(ReadingAfterCompleted);
        }
    }
}
