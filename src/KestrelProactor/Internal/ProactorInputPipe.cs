using System.Buffers;
using System.IO.Pipelines;
using System.Threading.Tasks.Sources;

namespace KestrelProactor.Internal;

/// <summary>
/// The input side of a connection when its backend lends receive buffers: a <see cref="PipeReader"/> whose
/// segments are the very buffers the kernel filled (no copy). A segment goes back to the backend as soon as
/// the application advances past it.
/// <para>
/// The dispatcher appends (one thread); the application reads (any thread). Both sides take <c>_sync</c>;
/// continuations and buffer returns run outside it. Back-pressure: once the unread bytes reach the pause
/// threshold, <see cref="Append"/> says so and the connection stops receiving; when the application has
/// consumed down to the resume threshold, <c>onResume</c> is scheduled on the dispatcher.
/// </para>
/// <para>
/// When the lender runs short (too many buffers out over all connections of a dispatcher), the dispatcher
/// copies data into a pooled block instead (<see cref="AppendCopy"/>), so a slow consumer never pins the ring.
/// </para>
/// </summary>
internal sealed class ProactorInputPipe : PipeReader, IValueTaskSource<ReadResult>
{
    private readonly Lock _sync = new();
    private readonly IReceiveBufferLender _lender;
    private readonly MemoryPool<byte> _pool;
    private readonly PipeScheduler _dispatcher;
    private readonly Action _onResume;
    private readonly long _pauseThreshold;
    private readonly long _resumeThreshold;
    private ManualResetValueTaskSourceCore<ReadResult> _readSource;
    private CancellationTokenRegistration _readRegistration;
    private CancellationToken _readToken;

    private Segment? _head;
    private int _headIndex;
    private Segment? _tail;
    private Segment? _free;
    private Segment? _heldHead;
    private Segment? _heldTail;
    private long _unread;
    private long _runningIndex;

    // Back-pressure counts bytes the reader has not examined yet, as System.IO.Pipelines does: a reader that
    // looked at everything and wants more (an incomplete header) releases the pause without consuming.
    private long _examinedIndex;
    private bool _readPending;
    private bool _examinedAll;
    private bool _cancelNextRead;
    private bool _writerCompleted;
    private Exception? _writerError;
    private bool _readerCompleted;
    private bool _paused;
    private int _lentCount;

    public ProactorInputPipe(IReceiveBufferLender lender, MemoryPool<byte> pool, PipeScheduler dispatcher, bool inlineContinuations, long pauseThreshold, Action onResume)
    {
        _lender = lender;
        _pool = pool;
        _dispatcher = dispatcher;
        _onResume = onResume;
        _pauseThreshold = pauseThreshold <= 0 ? long.MaxValue : pauseThreshold;
        _resumeThreshold = pauseThreshold <= 0 ? long.MaxValue : pauseThreshold / 2;
        // Inline: the application's read continuation runs on the dispatcher that appended (the socket
        // transport's UnsafePreferInlineScheduling); otherwise on the thread pool.
        _readSource.RunContinuationsAsynchronously = !inlineContinuations;
    }

    /// <summary>Buffers of the lender this connection holds (for its cap and for tests).</summary>
    public int LentCount => Volatile.Read(ref _lentCount);

    public enum AppendResult
    {
        /// <summary>Keep receiving.</summary>
        Continue,

        /// <summary>The unread bytes reached the pause threshold: stop receiving until onResume.</summary>
        Pause,

        /// <summary>The application completed its reader: nobody will read more (the pipe returned the buffer).</summary>
        ReaderCompleted,
    }

    /// <summary>Dispatcher: hands the application <paramref name="length"/> bytes of lent buffer <paramref name="bufferId"/>.</summary>
    public AppendResult Append(int bufferId, int length)
    {
        Segment segment = RentSegment();
        segment.SetLent(bufferId, _lender.GetMemory(bufferId).Slice(0, length));
        return AppendSegment(segment);
    }

    /// <summary>
    /// Dispatcher: hands the application a copy of <paramref name="data"/> in pool blocks (the lender's buffer
    /// goes back at once). Kestrel's pool hands out blocks of at most 4 KiB, so a receive may take several.
    /// </summary>
    public AppendResult AppendCopy(ReadOnlySpan<byte> data)
    {
        AppendResult result = AppendResult.Continue;
        int blockSize = _pool.MaxBufferSize > 0 ? _pool.MaxBufferSize : data.Length;
        while (!data.IsEmpty)
        {
            int length = Math.Min(data.Length, blockSize);
            IMemoryOwner<byte> owner = _pool.Rent(length);
            length = Math.Min(length, owner.Memory.Length);
            data.Slice(0, length).CopyTo(owner.Memory.Span);
            data = data.Slice(length);
            Segment segment = RentSegment();
            segment.SetOwned(owner, length);
            AppendResult appended = AppendSegment(segment);
            if (appended == AppendResult.ReaderCompleted)
            {
                return appended;
            }

            if (appended == AppendResult.Pause)
            {
                result = AppendResult.Pause;
            }
        }

        return result;
    }

    private AppendResult AppendSegment(Segment segment)
    {
        bool complete;
        ReadResult read;
        AppendResult result;
        lock (_sync)
        {
            if (_readerCompleted || _writerCompleted)
            {
                // Nobody will read it. A lent buffer is the pipe's from the moment it took the buffer's memory
                // (Append), so the pipe gives it back itself, as any segment it releases.
                ReleaseSegment(segment);
                return AppendResult.ReaderCompleted;
            }

            if (segment.IsLent)
            {
                _lentCount++;
            }

            if (_paused)
            {
                // Arrived after the pause point, before the receive was stopped: held back, as unflushed bytes
                // are in a pipe, and shown to the application as it consumes (see AdvanceTo).
                if (_heldTail is null)
                {
                    _heldHead = segment;
                }
                else
                {
                    _heldTail.NextInChain = segment;
                }

                _heldTail = segment;
                return AppendResult.Pause;
            }

            Publish(segment);

            result = _paused ? AppendResult.Pause : AppendResult.Continue;
            complete = TryTakePendingRead(out read);
        }

        // Outside the lock: with inline scheduling the application's continuation runs right here.
        if (complete)
        {
            _readSource.SetResult(read);
        }

        return result;
    }

    // Under _sync: makes a segment part of what the reader sees.
    private void Publish(Segment segment)
    {
        segment.RunningIndex = _runningIndex;
        _runningIndex += segment.Memory.Length;
        if (_tail is null)
        {
            _head = segment;
            _headIndex = 0;
        }
        else
        {
            _tail.SetNext(segment);
        }

        _tail = segment;
        _unread += segment.Memory.Length;
        _examinedAll = false;
        if (_runningIndex - _examinedIndex >= _pauseThreshold)
        {
            _paused = true;
        }
    }

    /// <summary>Dispatcher: no more data. The reader sees the end after the data already appended.</summary>
    public void CompleteWriter(Exception? error)
    {
        bool complete;
        ReadResult read;
        lock (_sync)
        {
            if (_writerCompleted)
            {
                return;
            }

            _writerCompleted = true;
            _writerError = error;
            complete = TryTakePendingRead(out read);
        }

        if (complete)
        {
            if (error is not null && read.IsCompleted)
            {
                _readSource.SetException(error);
            }
            else
            {
                _readSource.SetResult(read);
            }
        }
    }

    // Under _sync: if a read waits and there is something new to return, build its result.
    private bool TryTakePendingRead(out ReadResult read)
    {
        read = default;
        if (!_readPending)
        {
            return false;
        }

        if (_cancelNextRead)
        {
            _cancelNextRead = false;
            _readPending = false;
            read = new ReadResult(CurrentBuffer(), isCanceled: true, isCompleted: false);
            return true;
        }

        bool completed = _writerCompleted && _heldHead is null;
        if ((_unread > 0 && !_examinedAll) || completed)
        {
            _readPending = false;
            read = new ReadResult(CurrentBuffer(), isCanceled: false, isCompleted: completed);
            return true;
        }

        return false;
    }

    private ReadOnlySequence<byte> CurrentBuffer()
        => _head is null ? ReadOnlySequence<byte>.Empty : new ReadOnlySequence<byte>(_head, _headIndex, _tail!, _tail!.Memory.Length);

    public override ValueTask<ReadResult> ReadAsync(CancellationToken cancellationToken = default)
    {
        lock (_sync)
        {
            ThrowIfReaderCompleted();
            if (_readPending)
            {
                throw new InvalidOperationException("A read is already pending.");
            }

            _readPending = true;
            if (TryTakePendingRead(out ReadResult read))
            {
                if (_writerError is not null && read.IsCompleted)
                {
                    return ValueTask.FromException<ReadResult>(_writerError);
                }

                return new ValueTask<ReadResult>(read);
            }

            _readSource.Reset();
            if (cancellationToken.CanBeCanceled)
            {
                // As with System.IO.Pipelines, a cancelled token fails the read with OperationCanceledException
                // (CancelPendingRead instead returns a result marked IsCanceled).
                _readToken = cancellationToken;
                _readRegistration = cancellationToken.UnsafeRegister(static state => ((ProactorInputPipe)state!).CancelReadByToken(), this);
            }

            return new ValueTask<ReadResult>(this, _readSource.Version);
        }
    }

    public override bool TryRead(out ReadResult result)
    {
        lock (_sync)
        {
            ThrowIfReaderCompleted();
            if (_cancelNextRead)
            {
                _cancelNextRead = false;
                result = new ReadResult(CurrentBuffer(), isCanceled: true, isCompleted: false);
                return true;
            }

            bool completed = _writerCompleted && _heldHead is null;
            if ((_unread > 0 && !_examinedAll) || completed)
            {
                if (_writerError is not null && completed)
                {
                    throw _writerError;
                }

                result = new ReadResult(CurrentBuffer(), isCanceled: false, isCompleted: completed);
                return true;
            }

            result = default;
            return false;
        }
    }

    public override void AdvanceTo(SequencePosition consumed) => AdvanceTo(consumed, consumed);

    public override void AdvanceTo(SequencePosition consumed, SequencePosition examined)
    {
        Segment? released = null;
        bool resume = false;
        lock (_sync)
        {
            ThrowIfReaderCompleted();
            if (_head is null)
            {
                return;
            }

            var consumedSegment = (Segment?)consumed.GetObject();
            int consumedIndex = consumed.GetInteger();
            if (consumedSegment is not null)
            {
                // Free every segment before the consumed one, and the consumed one when it is used up.
                while (_head is not null && _head != consumedSegment)
                {
                    Segment done = _head;
                    _unread -= done.Memory.Length - _headIndex;
                    _head = done.NextSegment;
                    _headIndex = 0;
                    done.NextInChain = released;
                    released = done;
                }

                if (_head is not null)
                {
                    _unread -= consumedIndex - _headIndex;
                    _headIndex = consumedIndex;
                    if (_headIndex == _head.Memory.Length)
                    {
                        Segment done = _head;
                        _head = done.NextSegment;
                        _headIndex = 0;
                        done.NextInChain = released;
                        released = done;
                    }
                }

                if (_head is null)
                {
                    _tail = null;
                }
            }

            var examinedSegment = (Segment?)examined.GetObject();
            _examinedAll = _tail is null || (examinedSegment == _tail && examined.GetInteger() == _tail.Memory.Length);
            long examinedIndex = _tail is null
                ? _runningIndex
                : examinedSegment is not null ? examinedSegment.RunningIndex + examined.GetInteger() : _examinedIndex;
            if (examinedIndex > _examinedIndex)
            {
                _examinedIndex = examinedIndex;
            }

            if (_paused && _runningIndex - _examinedIndex <= _resumeThreshold)
            {
                // Show what was held back first; receiving resumes only if it all fits under the pause point.
                _paused = false;
                while (_heldHead is not null && !_paused)
                {
                    Segment next = _heldHead;
                    _heldHead = next.NextInChain;
                    next.NextInChain = null;
                    Publish(next);
                }

                if (_heldHead is null)
                {
                    _heldTail = null;
                }

                resume = !_paused;
            }

            for (Segment? s = released; s is not null; s = s.NextInChain)
            {
                if (s.IsLent)
                {
                    _lentCount--;
                }
            }
        }

        ReleaseChain(released);
        if (resume)
        {
            _dispatcher.Schedule(static state => ((Action)state!)(), _onResume);
        }
    }

    private void CancelReadByToken()
    {
        bool pending;
        lock (_sync)
        {
            pending = _readPending;
            _readPending = false;
        }

        if (pending)
        {
            _readSource.SetException(new OperationCanceledException(_readToken));
        }
    }

    public override void CancelPendingRead()
    {
        bool complete;
        ReadResult read;
        lock (_sync)
        {
            _cancelNextRead = true;
            complete = TryTakePendingRead(out read);
        }

        if (complete)
        {
            _readSource.SetResult(read);
        }
    }

    public override void Complete(Exception? exception = null)
    {
        Segment? released = null;
        bool resume = false;
        lock (_sync)
        {
            if (_readerCompleted)
            {
                return;
            }

            _readerCompleted = true;
            for (Segment? s = _head; s is not null; s = s.NextSegment)
            {
                s.NextInChain = released;
                released = s;
                if (s.IsLent)
                {
                    _lentCount--;
                }
            }

            for (Segment? s = _heldHead; s is not null;)
            {
                Segment next = s.NextInChain!;
                s.NextInChain = released;
                released = s;
                if (s.IsLent)
                {
                    _lentCount--;
                }

                s = next;
            }

            _head = _tail = null;
            _heldHead = _heldTail = null;
            _unread = 0;
            resume = _paused;
            _paused = false;
        }

        ReleaseChain(released);
        if (resume)
        {
            // Let the connection see the reader is gone (its next append reports ReaderCompleted).
            _dispatcher.Schedule(static state => ((Action)state!)(), _onResume);
        }
    }

    /// <summary>True once the application completed the reader.</summary>
    public bool IsReaderCompleted
    {
        get
        {
            lock (_sync)
            {
                return _readerCompleted;
            }
        }
    }

    private void ThrowIfReaderCompleted()
    {
        if (_readerCompleted)
        {
            throw new InvalidOperationException("Reading is not allowed after the reader was completed.");
        }
    }

    private void ReleaseChain(Segment? chain)
    {
        while (chain is not null)
        {
            Segment next = chain.NextInChain!;
            ReleaseSegment(chain);
            chain = next;
        }
    }

    private void ReleaseSegment(Segment segment)
    {
        if (segment.IsLent)
        {
            _lender.Return(segment.BufferId);
        }

        segment.Reset();
        lock (_sync)
        {
            segment.NextInChain = _free;
            _free = segment;
        }
    }

    private Segment RentSegment()
    {
        lock (_sync)
        {
            Segment? segment = _free;
            if (segment is not null)
            {
                _free = segment.NextInChain;
                segment.NextInChain = null;
                return segment;
            }
        }

        return new Segment();
    }

    ReadResult IValueTaskSource<ReadResult>.GetResult(short token)
    {
        _readRegistration.Dispose();
        _readRegistration = default;
        _readToken = default;
        return _readSource.GetResult(token);
    }

    ValueTaskSourceStatus IValueTaskSource<ReadResult>.GetStatus(short token) => _readSource.GetStatus(token);

    void IValueTaskSource<ReadResult>.OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags)
        => _readSource.OnCompleted(continuation, state, token, flags);

    private sealed class Segment : ReadOnlySequenceSegment<byte>
    {
        private IMemoryOwner<byte>? _owner;

        public int BufferId { get; private set; } = -1;

        public bool IsLent => BufferId >= 0;

        /// <summary>Links segments being released or free, without touching the sequence links.</summary>
        public Segment? NextInChain { get; set; }

        public Segment? NextSegment => (Segment?)Next;

        public void SetLent(int bufferId, Memory<byte> memory)
        {
            BufferId = bufferId;
            Memory = memory;
        }

        public void SetOwned(IMemoryOwner<byte> owner, int length)
        {
            _owner = owner;
            BufferId = -1;
            Memory = owner.Memory.Slice(0, length);
        }

        public void SetNext(Segment next) => Next = next;

        public void Reset()
        {
            _owner?.Dispose();
            _owner = null;
            BufferId = -1;
            Memory = default;
            Next = null;
            RunningIndex = 0;
        }

        public new long RunningIndex
        {
            get => base.RunningIndex;
            set => base.RunningIndex = value;
        }
    }
}
