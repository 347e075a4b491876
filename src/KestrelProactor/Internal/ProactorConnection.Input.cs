using System.Buffers;
using System.IO.Pipelines;
using System.Runtime.CompilerServices;
using KestrelProactor.Dispatching;

namespace KestrelProactor.Internal;

/// <summary>
/// The connection's two kinds of input. Where the backend lends its receive buffers, a <see cref="ProactorInputPipe"/>
/// (lent buffers and copies, see AppendReceived); otherwise a System.IO.Pipelines Pipe the backend receives straight
/// into (IOCP, the io_uring basic tier). Either way back-pressure stops receiving, and the socket transport's pause
/// and resume events are logged where it logs them.
/// </summary>
internal sealed partial class ProactorConnection
{
    /// <summary>
    /// What a receive into pipe memory asks for unless the last one filled its memory (the socket transport asks
    /// for as much): the pipe then reads into the free room of its last block instead of taking a new block (or a
    /// new 16 KiB array) per receive, which a peer sending tiny packets would make one per packet.
    /// </summary>
    private const int SmallReceiveSize = 2048;

    /// <summary>Pipe memory a direct receive (no buffer ring) reads into; pinned while that receive is in flight.</summary>
    private MemoryHandle _receivePin;
    private bool _receiveIntoPipe;
    private int _receiveMemoryLength;
    private bool _lastReceiveFilled;

    // The copying input's flush, pending while back-pressure holds it.
    private Action? _onInputFlushed;
    private ValueTaskAwaiter<FlushResult> _inputFlushAwaiter;

    // The copying input's reader (null with a lending input), the bytes it received before the application first
    // read, and 1 while receiving waits for that first read (see HoldUntilFirstRead).
    private readonly ProactorCopyingInputReader? _copyingReader;
    private long _preReadBytes;
    private int _preReadHeld;

    /// <summary>
    /// For a receive straight into the pipe: memory to read into, pinned until <see cref="OnReceiveCompleted"/>.
    /// </summary>
    public Memory<byte> RentReceiveMemory(int sizeHint)
    {
        // After a receive that filled its memory more is probably waiting, and the whole size is worth its memory.
        Memory<byte> memory = Input!.GetMemory(_lastReceiveFilled ? sizeHint : Math.Min(sizeHint, SmallReceiveSize));
        _receiveMemoryLength = memory.Length;
        _receivePin = memory.Pin();
        _receiveIntoPipe = true;
        return memory;
    }

    /// <summary>Lending path: the kernel's buffer goes to the application as it is, or is copied (see AppendReceived).</summary>
    private bool OnReceivedLending(ReadOnlySpan<byte> data, bool more, int lentBufferId)
    {
        if (_inputEnded)
        {
            return false;
        }

        // Lend within this connection's share while the ring has buffers to spare; past either, the pipe copies.
        bool mayLend = lentBufferId >= 0 && _lendingInput!.LentCount < _lentBufferCap && !Dispatcher.ReceiveBufferLender!.ShouldCopy;
        ProactorInputPipe.AppendResult appended = _lendingInput!.AppendReceived(data, mayLend ? lentBufferId : -1, out bool taken);
        switch (appended)
        {
            case ProactorInputPipe.AppendResult.Pause:
                // MaxReadBufferSize reached: stop receiving until the application consumed half.
                if (!_inputFlushPending)
                {
                    _inputFlushPending = true;
                    ProactorLog.ConnectionPause(_logger, ConnectionId);
                }

                if (_receiveActive && !_receiveCancelRequested)
                {
                    _receiveCancelRequested = true;
                    Dispatcher.SubmitCancel(this, OperationKind.Receive);
                }

                break;
            case ProactorInputPipe.AppendResult.ReaderCompleted:
                OnInputReaderCompleted(_lendingInput.ReaderError);
                break;
            default:
                if (!more)
                {
                    ArmReceive();
                }

                break;
        }

        return taken;
    }

    /// <summary>
    /// The application completed the input. With an exception, as the socket transport (whose next flush throws it):
    /// a connection error at Debug, the receive loop ends with it, and ConnectionClosed fires.
    /// </summary>
    private void OnInputReaderCompleted(Exception? error)
    {
        if (error is null)
        {
            EndInput(null);
            return;
        }

        if (!_inputEnded)
        {
            ProactorLog.ConnectionError(_logger, ConnectionId, "input", $"the application's {error.GetType().Name}: {error.Message}");
        }

        EndInput(error);
        FireConnectionClosed();
    }

    /// <summary>The application consumed down to the resume threshold (or completed its reader).</summary>
    private void OnLendingResumed()
    {
        try
        {
            TestInputResumeHook?.Invoke(this);
            if (_inputFlushPending)
            {
                _inputFlushPending = false;
                ProactorLog.ConnectionResume(_logger, ConnectionId);
            }

            if (_lendingInput!.IsReaderCompleted)
            {
                OnInputReaderCompleted(_lendingInput.ReaderError);
                return;
            }

            ArmReceive();
        }
        catch (Exception ex)
        {
            // Run by the pipe with state of its own: this connection takes the fault itself (see the output's).
            Dispatcher.OnHandlerFault(this, OperationKind.Receive, operationEnded: false, ex);
            AdvanceClose();
        }
    }

    private void FlushInput()
    {
        ValueTask<FlushResult> flush;
        FlushResult result = default;
        bool completed;
        try
        {
            flush = Input!.FlushAsync();
            completed = flush.IsCompleted;
            if (completed)
            {
                result = flush.GetAwaiter().GetResult();
            }
        }
        catch (Exception ex)
        {
            // Only the pipe throws here: the exception the application completed the input with.
            OnInputReaderCompleted(ex);
            return;
        }

        if (completed)
        {
            OnInputFlushed(result);
            return;
        }

        // Back-pressure: the pipe holds MaxReadBufferSize bytes. Receive again only once the application has
        // consumed half; the continuation runs on this dispatcher (the input writer's scheduler). A multishot
        // receive would go on filling buffers, so it is cancelled; what arrives before the cancel lands is
        // kept (written, unflushed), so nothing is lost and the overshoot is bounded by one pass.
        _inputFlushPending = true;
        ProactorLog.ConnectionPause(_logger, ConnectionId);
        if (_receiveActive && !_receiveCancelRequested && !_receiveIntoPipe)
        {
            _receiveCancelRequested = true;
            Dispatcher.SubmitCancel(this, OperationKind.Receive);
        }

        _inputFlushAwaiter = flush.GetAwaiter();
        _inputFlushAwaiter.UnsafeOnCompleted(_onInputFlushed ??= OnInputFlushedContinuation);
    }

    private void OnInputFlushedContinuation()
    {
        try
        {
            TestInputResumeHook?.Invoke(this);
            _inputFlushPending = false;
            ProactorLog.ConnectionResume(_logger, ConnectionId);
            FlushResult result;
            try
            {
                result = _inputFlushAwaiter.GetResult();
            }
            catch (Exception ex)
            {
                // Only the pipe throws here: the exception the application completed the input with.
                _inputFlushAwaiter = default;
                OnInputReaderCompleted(ex);
                return;
            }

            _inputFlushAwaiter = default;
            OnInputFlushed(result);
        }
        catch (Exception ex)
        {
            // Run by the pipe with state of its own: this connection takes the fault itself (see the output's).
            Dispatcher.OnHandlerFault(this, OperationKind.Receive, operationEnded: false, ex);
            AdvanceClose();
        }
    }

    private void OnInputFlushed(FlushResult result)
    {
        if (result.IsCompleted)
        {
            // The application completed its input: no reader for more bytes.
            EndInput(null);
            return;
        }

        if (Input!.UnflushedBytes > 0 && !_inputWriterCompleted)
        {
            // Bytes a multishot receive delivered while paused.
            FlushInput();
            return;
        }

        if (_preReadBytes >= ProactorInputPipe.PreReadPauseThreshold && HoldUntilFirstRead())
        {
            return;
        }

        ArmReceive();
    }

    /// <summary>
    /// The copying input received <see cref="ProactorInputPipe.PreReadPauseThreshold"/> bytes and the application
    /// has not read yet (a connection starts receiving at accept, before Kestrel takes it): receiving pauses until
    /// the first read, as the lending input's lower threshold does. Returns false when the application has read.
    /// </summary>
    private bool HoldUntilFirstRead()
    {
        if (_copyingReader is not { ReadStarted: false })
        {
            return false;
        }

        // A full fence between this store and the read of ReadStarted; the reader fences the other way round, so
        // at least one side sees the other and the first read always ends the hold.
        Interlocked.Exchange(ref _preReadHeld, 1);
        if (_copyingReader.ReadStarted)
        {
            Volatile.Write(ref _preReadHeld, 0);
            return false;
        }

        _inputFlushPending = true;
        ProactorLog.ConnectionPause(_logger, ConnectionId);
        return true;
    }

    /// <summary>From the application's first read (any thread): ends a hold of <see cref="HoldUntilFirstRead"/>.</summary>
    internal void OnApplicationFirstRead()
    {
        if (Volatile.Read(ref _preReadHeld) != 0)
        {
            Dispatcher.Schedule(static state => ((ProactorConnection)state!).ReleasePreReadHold(), this);
        }
    }

    private void ReleasePreReadHold()
    {
        if (Interlocked.Exchange(ref _preReadHeld, 0) == 0)
        {
            return;
        }

        try
        {
            _inputFlushPending = false;
            ProactorLog.ConnectionResume(_logger, ConnectionId);
            ArmReceive();
        }
        catch (Exception ex)
        {
            // A work item with state of its own: this connection takes the fault, as on the other resumes.
            Dispatcher.OnHandlerFault(this, OperationKind.Receive, operationEnded: false, ex);
            AdvanceClose();
        }
    }

    /// <summary>A receive into pipe memory is over: the memory is no longer the kernel's.</summary>
    private void ReleaseReceivePin()
    {
        if (_receiveIntoPipe)
        {
            _receiveIntoPipe = false;
            _receivePin.Dispose();
            _receivePin = default;
        }
    }
}
