using System.Buffers;
using System.IO.Pipelines;
using System.Runtime.ExceptionServices;
using System.Threading.Tasks.Sources;

using KestrelProactor.Dispatching;

namespace KestrelProactor.Internal;

/// <summary>
/// The input side of a connection when its backend lends receive buffers: a <see cref="PipeReader"/> that keeps
/// System.IO.Pipelines' reader contract (Pipe.Reader is the reference; the conformance tests run against both),
/// whose segments are either the buffers the kernel filled (no copy) or pool blocks small receives were copied into.
/// <para>
/// Memory follows bytes, not packets. A receive that fills a good part of its buffer is lent as it is; a smaller one
/// is copied into the free room of the last segment (or a new pool block), so a peer sending one byte per packet
/// fills one block per few thousand packets instead of pinning a buffer per packet. Held memory stays within a
/// small multiple of the unconsumed bytes plus one buffer (see <see cref="AppendReceived"/>). A segment goes back
/// to the backend or the pool as soon as the application has consumed all of it.
/// </para>
/// <para>
/// The dispatcher appends (one thread); the application reads (any thread). Both sides take <c>_sync</c>;
/// continuations, scheduled resumes and buffer returns run outside it. Back-pressure counts bytes the reader has
/// not examined, as Pipe does: once they reach the pause threshold the append says so and the connection stops
/// receiving; once the application has examined enough to go below the resume threshold, <c>onResume</c> runs on
/// the dispatcher. The reader half is in ProactorInputPipe.Reader.cs.
/// </para>
/// </summary>
internal sealed partial class ProactorInputPipe : PipeReader, IValueTaskSource<ReadResult>
{
    /// <summary>
    /// Until the application first reads, the input pauses at this many bytes (or MaxReadBufferSize, if lower):
    /// a connection is started at accept, before Kestrel takes it, so that a request is usually in its input when
    /// Kestrel first reads; this bounds what such a connection holds while the thread pool is too busy to take it.
    /// </summary>
    public const long PreReadPauseThreshold = 64 * 1024;

    private static readonly Action<object?> s_runResume = static state => ((ProactorInputPipe)state!).RunResume();

    private readonly Lock _sync = new();
    private readonly IReceiveBufferLender _lender;
    private readonly MemoryPool<byte> _pool;
    private readonly PipeScheduler _dispatcher;
    private readonly Action _onResume;
    private readonly long _configuredPauseThreshold;
    private long _pauseThreshold;
    private long _resumeThreshold;

    // The chain the reader sees: _head (from _headIndex) to _tail. Positions are pipe-wide indexes
    // (segment.RunningIndex + index); _end is the index after the last byte appended.
    private ProactorInputSegment? _head;
    private int _headIndex;
    private ProactorInputSegment? _tail;
    private ProactorInputSegment? _heldHead;
    private ProactorInputSegment? _heldTail;
    private long _end;
    private int _lentCount;
    private bool _paused;
    private bool _writerCompleted;
    private ExceptionDispatchInfo? _writerError;
    private bool _readerCompleted;
    private Exception? _readerError;

    public ProactorInputPipe(IReceiveBufferLender lender, MemoryPool<byte> pool, PipeScheduler dispatcher, bool inlineContinuations, long pauseThreshold, Action onResume)
    {
        _lender = lender;
        _pool = pool;
        _dispatcher = dispatcher;
        _onResume = onResume;
        _configuredPauseThreshold = pauseThreshold <= 0 ? long.MaxValue : pauseThreshold;
        SetThresholds(Math.Min(_configuredPauseThreshold, PreReadPauseThreshold));
        // Inline: the application's read continuation runs on the dispatcher that appended (the socket
        // transport's UnsafePreferInlineScheduling); otherwise on the thread pool.
        _readSource.RunContinuationsAsynchronously = !inlineContinuations;
    }

    public enum AppendResult
    {
        /// <summary>Keep receiving.</summary>
        Continue,

        /// <summary>The unexamined bytes reached the pause threshold: stop receiving until onResume.</summary>
        Pause,

        /// <summary>The reader or the writer was completed: nobody will read more (a lent buffer stays the caller's).</summary>
        ReaderCompleted,
    }

    /// <summary>Buffers of the lender this pipe holds (for the connection's cap and for tests).</summary>
    public int LentCount => Volatile.Read(ref _lentCount);

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

    /// <summary>The exception the application completed the reader with, if any.</summary>
    public Exception? ReaderError
    {
        get
        {
            lock (_sync)
            {
                return _readerError;
            }
        }
    }

    /// <summary>True while back-pressure holds the writer.</summary>
    public bool IsPaused
    {
        get
        {
            lock (_sync)
            {
                return _paused;
            }
        }
    }

    /// <summary>
    /// Dispatcher: hands over one receive. It is lent as it is when <paramref name="bufferId"/> is a buffer the
    /// caller may lend, the receive fills at least a quarter of it and the pipe is not paused (bytes held back by
    /// back-pressure must not pin the lender's buffers); otherwise it is copied (see <see cref="AppendCopy"/>).
    /// Bounds: a lent segment holds at least a quarter of its buffer; copies fill the tail before a new block is
    /// taken, so only a block followed by a lent segment can be left part empty. Held memory is thus at most about
    /// five times the bytes held, plus the tail buffer.
    /// </summary>
    /// <param name="data">The bytes received.</param>
    /// <param name="bufferId">The lender's buffer holding them, if the caller may lend it; else -1.</param>
    /// <param name="taken">True when the pipe took the lent buffer (it goes back to the lender once consumed).</param>
    public AppendResult AppendReceived(ReadOnlySpan<byte> data, int bufferId, out bool taken)
    {
        taken = false;
        if (bufferId >= 0 && data.Length >= _lender.BufferSize / 4 && !IsPaused)
        {
            AppendResult lent = Append(bufferId, data.Length);
            taken = lent != AppendResult.ReaderCompleted;
            return lent;
        }

        return AppendCopy(data);
    }

    /// <summary>
    /// Outside the lock: completes the read taken by <c>TryTakePendingRead</c> (with inline scheduling the application's
    /// continuation runs right here). A continuation sent to the pool lets the dispatcher look for the response
    /// (<see cref="ProactorTransportOptions.HandOffSpinTime"/>).
    /// </summary>
    private void CompletePendingRead()
    {
        _readSource.SetResult(true);
        if (_readSource.RunContinuationsAsynchronously)
        {
            (_dispatcher as ProactorDispatcher)?.NoteReaderWoken();
        }
    }

    /// <summary>Dispatcher: hands the application <paramref name="length"/> bytes of lent buffer <paramref name="bufferId"/>, without a copy.</summary>
    public AppendResult Append(int bufferId, int length)
    {
        bool complete;
        AppendResult result;
        lock (_sync)
        {
            if (_readerCompleted || _writerCompleted)
            {
                return AppendResult.ReaderCompleted;
            }

            var segment = new ProactorInputSegment();
            segment.SetLent(bufferId, _lender.GetMemory(bufferId), length);
            _lentCount++;
            if (_paused)
            {
                Hold(segment);
                return AppendResult.Pause;
            }

            Link(segment);
            _end += length;
            result = OnAppended();
            complete = TryTakePendingRead();
        }

        // Outside the lock: with inline scheduling the application's continuation runs right here.
        if (complete)
        {
            CompletePendingRead();
        }

        return result;
    }

    /// <summary>
    /// Dispatcher: hands the application a copy of <paramref name="data"/>, appended to the free room of the last
    /// segment and then to new pool blocks (the caller keeps its buffer).
    /// </summary>
    public AppendResult AppendCopy(ReadOnlySpan<byte> data)
    {
        bool complete;
        AppendResult result;
        lock (_sync)
        {
            if (_readerCompleted || _writerCompleted)
            {
                return AppendResult.ReaderCompleted;
            }

            // Under the lock: the reader may release a fully consumed tail at any moment, and the copy must not
            // land in memory that went back to the pool. The copies are at most one receive long.
            if (_paused)
            {
                data = data[(_heldTail?.Append(data) ?? 0)..];
                while (!data.IsEmpty)
                {
                    ProactorInputSegment held = NewBlock();
                    data = data[held.Append(data)..];
                    Hold(held);
                }

                return AppendResult.Pause;
            }

            if (_tail is not null)
            {
                int appended = _tail.Append(data);
                _end += appended;
                data = data[appended..];
            }

            while (!data.IsEmpty)
            {
                ProactorInputSegment segment = NewBlock();
                Link(segment);
                int appended = segment.Append(data);
                _end += appended;
                data = data[appended..];
            }

            result = OnAppended();
            complete = TryTakePendingRead();
        }

        if (complete)
        {
            CompletePendingRead();
        }

        return result;
    }

    /// <summary>Dispatcher: no more data. The reader sees the end after the data already appended, or the error.</summary>
    public void CompleteWriter(Exception? error)
    {
        bool complete;
        lock (_sync)
        {
            if (_writerCompleted)
            {
                return;
            }

            _writerCompleted = true;
            // Captured, so that every read that throws it keeps the stack it had (if it was thrown) and adds its own.
            _writerError = error is null ? null : ExceptionDispatchInfo.Capture(error);
            _signaled = true;
            complete = TryTakePendingRead();
        }

        if (complete)
        {
            CompletePendingRead();
        }
    }

    // Under _sync: appends a segment to the chain, after the current tail.
    private void Link(ProactorInputSegment segment)
    {
        segment.Link(this, _end);
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
    }

    // Under _sync, after bytes were appended: wake the reader, and pause when the unexamined bytes reached the threshold.
    private AppendResult OnAppended()
    {
        _signaled = true;
        if (!_paused && _end - _examined >= _pauseThreshold)
        {
            _paused = true;
        }

        return _paused ? AppendResult.Pause : AppendResult.Continue;
    }

    private void SetThresholds(long pauseThreshold)
    {
        _pauseThreshold = pauseThreshold;
        // As Pipe: resume below half. With a threshold of 1 that is 0, which nothing is below; resume at 0 then.
        _resumeThreshold = pauseThreshold == long.MaxValue ? long.MaxValue : Math.Max(1, pauseThreshold / 2);
    }

    /// <summary>Runs on the dispatcher after a resume was scheduled.</summary>
    private void RunResume()
    {
        lock (_sync)
        {
            if (_paused && !_readerCompleted)
            {
                // A late arrival (a multishot receive's last completions) paused the pipe again after the resume was
                // scheduled: receiving must not restart; the application's next consume schedules another resume.
                return;
            }
        }

        _onResume();
    }

    // Under _sync. A new segment each time, never a reused one: a position the application kept from an earlier
    // read then cannot name bytes that arrived later (Pipe reuses its segments, and there a stale AdvanceTo
    // consumes unread bytes). The pool's usual block (Kestrel's is 4 KiB): copies are small, and fill it first.
    private ProactorInputSegment NewBlock()
    {
        var segment = new ProactorInputSegment();
        segment.SetOwned(_pool.Rent());
        return segment;
    }

    // Under _sync, while paused: keeps bytes that arrived after the pause point (a multishot receive's completions
    // before its cancel landed) out of the reader's sight, as a paused Pipe writer would not have flushed them. The
    // reader sees them as it consumes (TryResume), so what it is shown stays near MaxReadBufferSize.
    private void Hold(ProactorInputSegment segment)
    {
        if (_heldTail is null)
        {
            _heldHead = segment;
        }
        else
        {
            _heldTail.NextInChain = segment;
        }

        _heldTail = segment;
    }

    // Under _sync, once the unexamined bytes went below the resume threshold: unpauses, shows held segments until
    // the pause threshold is reached again; true if the writer may resume (nothing is held any more).
    private bool TryResume()
    {
        _paused = false;
        while (_heldHead is not null && !_paused)
        {
            ProactorInputSegment next = _heldHead;
            _heldHead = next.NextInChain;
            next.NextInChain = null;
            Link(next);
            _end += next.Length;
            OnAppended();
        }

        if (_heldHead is null)
        {
            _heldTail = null;
        }

        return !_paused;
    }

    // Under _sync: takes a segment out of the chain; its memory is released after the lock (ReleaseChain).
    private void Unlink(ProactorInputSegment segment, ref ProactorInputSegment? released)
    {
        if (segment.IsLent)
        {
            _lentCount--;
        }

        segment.Detach();
        segment.NextInChain = released;
        released = segment;
    }

    // Outside _sync: gives each segment's memory back (lent buffers to the lender, blocks to the pool).
    private void ReleaseChain(ProactorInputSegment? chain)
    {
        while (chain is not null)
        {
            ProactorInputSegment next = chain.NextInChain!;
            if (chain.IsLent)
            {
                _lender.Return(chain.BufferId);
            }

            chain.Reset();
            chain.NextInChain = null;
            chain = next;
        }
    }
}
