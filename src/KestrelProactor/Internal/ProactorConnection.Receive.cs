using System.Buffers;
using System.IO.Pipelines;
using System.Net.Sockets;
using System.Runtime.CompilerServices;
using KestrelProactor.Dispatching;
using Microsoft.AspNetCore.Connections;

namespace KestrelProactor.Internal;

internal sealed partial class ProactorConnection
{
    /// <summary>Tests only: runs where the input resumes after back-pressure (both continuations), to inject a fault there.</summary>
    internal static Action<ProactorConnection>? TestInputResumeHook { get; set; }

    private bool _receiveActive;
    private bool _inputEnded;
    private bool _inputFlushPending;
    private bool _receiveCancelRequested;
    private bool _inputWriterCompleted;
    private bool _inputCompletionPending;
    private Exception? _inputError;
    private Action? _onInputFlushed;
    private ValueTaskAwaiter<FlushResult> _inputFlushAwaiter;

    /// <summary>The input when the backend lends its receive buffers (no copy); null when receives are copied into a pipe.</summary>
    private readonly ProactorInputPipe? _lendingInput;

    /// <summary>Buffers this connection may hold before further data is copied instead of lent.</summary>
    private readonly int _lentBufferCap;

    /// <summary>Pipe memory a direct receive (no buffer ring) reads into; pinned while that receive is in flight.</summary>
    private MemoryHandle _receivePin;
    private bool _receiveIntoPipe;

    public bool ReceiveActive => _receiveActive;

    /// <summary>True while back-pressure holds receiving (the application has not caught up).</summary>
    public bool IsReceivePaused => _inputFlushPending;

    /// <summary>True once the connection has started closing: no new operation may be submitted for it.</summary>
    public bool IsClosing => _closeStarted;

    /// <summary>Submits the next receive unless one is in flight, the input has ended, or the connection is closing.</summary>
    private void ArmReceive()
    {
        if (_receiveActive || _inputEnded || _closeStarted)
        {
            return;
        }

        // Set once the submission is queued: if preparing it throws, no receive is in flight for the close to wait on.
        Dispatcher.SubmitReceive(this);
        _receiveActive = true;
    }

    /// <summary>
    /// For a receive straight into the pipe: memory to read into, pinned until <see cref="OnReceiveCompleted"/>.
    /// </summary>
    public Memory<byte> RentReceiveMemory(int sizeHint)
    {
        Memory<byte> memory = Input!.GetMemory(sizeHint);
        _receivePin = memory.Pin();
        _receiveIntoPipe = true;
        return memory;
    }

    /// <summary>
    /// A receive completed. With a provided buffer, <paramref name="data"/> holds the bytes: they are copied
    /// into the pipe (the backend returns the buffer right after). After a receive into rented pipe memory the
    /// bytes are already in place: <paramref name="data"/> views them on IOCP and is empty on the io_uring basic
    /// tier, and only the test receive hook reads it. <paramref name="more"/>: a multishot receive stays armed
    /// and will complete again.
    /// </summary>
    /// <returns>True when the connection took buffer <paramref name="lentBufferId"/> (it goes back when the application consumed it).</returns>
    public bool OnReceiveCompleted(IoResult result, ReadOnlySpan<byte> data, bool more, int lentBufferId)
    {
        if (!more)
        {
            _receiveActive = false;
            _receiveCancelRequested = false;
        }

        bool intoPipe = _receiveIntoPipe;
        ReleaseReceivePin();

        try
        {
            if (result.IsSuccess && result.Value > 0)
            {
                ProactorDispatcher.TestReceiveHook?.Invoke(data);
                OnInputArrived();
                if (_lendingInput is not null)
                {
                    return OnReceivedLending(data, more, lentBufferId);
                }

                if (_inputEnded)
                {
                    // The application stopped reading, or the connection is closing: nobody will read these bytes.
                    if (intoPipe)
                    {
                        Input!.Advance(0);
                    }

                    return false;
                }

                if (intoPipe)
                {
                    Input!.Advance(result.Value);
                }
                else
                {
                    Input!.Write(data);
                }

                if (!_inputFlushPending)
                {
                    FlushInput();
                }
                else if (!more)
                {
                    // Paused: the bytes wait unflushed in the pipe until the application catches up.
                }

                return false;
            }

            if (intoPipe)
            {
                Input!.Advance(0);
            }

            if (result.IsSuccess)
            {
                // 0 bytes: the peer sent FIN. The output side stays open (half-close).
                EndInput(null);
                FireConnectionClosed();
                return false;
            }

            switch (result.Error)
            {
                case SocketError.OperationAborted:
                    // Cancelled, either by the close path (which completes the input with the right reason) or
                    // to pause a multishot receive for back-pressure; in that case the flush that completes
                    // re-arms, unless it already has completed.
                    if (!_inputFlushPending)
                    {
                        ArmReceive();
                    }

                    return false;
                case SocketError.ConnectionReset:
                    ProactorLog.ConnectionReset(_logger, ConnectionId);
                    EndInput(new ConnectionResetException(result.ToString(), result.ToException()));
                    FireConnectionClosed();
                    BeginClose(abortive: true);
                    return false;
                default:
                    ProactorLog.ConnectionError(_logger, ConnectionId, "receive", result.ToString());
                    EndInput(new ConnectionResetException(result.ToString(), result.ToException()));
                    FireConnectionClosed();
                    BeginClose(abortive: true);
                    return false;
            }
        }
        finally
        {
            if (_inputCompletionPending)
            {
                _inputCompletionPending = false;
                CompleteInputWriter();
            }
        }
    }

    /// <summary>Lending path: the kernel's buffer goes to the application as it is (or as a copy past the caps).</summary>
    private bool OnReceivedLending(ReadOnlySpan<byte> data, bool more, int lentBufferId)
    {
        if (_inputEnded)
        {
            return false;
        }

        ProactorInputPipe.AppendResult appended;
        bool taken = false;
        // Lend while the application keeps up; copy while paused (bytes held back must not pin the ring), past
        // this connection's share, or when the ring runs low.
        if (lentBufferId >= 0 && !_inputFlushPending && _lendingInput!.LentCount < _lentBufferCap && !Dispatcher.ReceiveBufferLender!.ShouldCopy)
        {
            appended = _lendingInput.Append(lentBufferId, data.Length);
            taken = appended != ProactorInputPipe.AppendResult.ReaderCompleted;
        }
        else
        {
            appended = _lendingInput!.AppendCopy(data);
        }

        switch (appended)
        {
            case ProactorInputPipe.AppendResult.Pause:
                // MaxReadBufferSize reached: stop receiving until the application consumed half.
                _inputFlushPending = true;
                if (_receiveActive && !_receiveCancelRequested)
                {
                    _receiveCancelRequested = true;
                    Dispatcher.SubmitCancel(this, OperationKind.Receive);
                }

                break;
            case ProactorInputPipe.AppendResult.ReaderCompleted:
                EndInput(null);
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

    /// <summary>The application consumed down to the resume threshold (or completed its reader).</summary>
    private void OnLendingResumed()
    {
        try
        {
            TestInputResumeHook?.Invoke(this);
            _inputFlushPending = false;
            if (_lendingInput!.IsReaderCompleted)
            {
                EndInput(null);
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
        ValueTask<FlushResult> flush = Input!.FlushAsync();
        if (flush.IsCompleted)
        {
            OnInputFlushed(flush.GetAwaiter().GetResult());
            return;
        }

        // Back-pressure: the pipe holds MaxReadBufferSize bytes. Receive again only once the application has
        // consumed half; the continuation runs on this dispatcher (the input writer's scheduler). A multishot
        // receive would go on filling buffers, so it is cancelled; what arrives before the cancel lands is
        // kept (written, unflushed), so nothing is lost and the overshoot is bounded by one pass.
        _inputFlushPending = true;
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
            FlushResult result = _inputFlushAwaiter.GetResult();
            _inputFlushAwaiter = default;
            _inputFlushPending = false;
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

        ArmReceive();
    }

    /// <summary>No more receives; the input pipe completes with <paramref name="error"/> (null: clean end).</summary>
    private void EndInput(Exception? error)
    {
        if (_inputEnded)
        {
            return;
        }

        _inputEnded = true;
        _inputError = error;
        if (_receiveActive && !_receiveIntoPipe && !_receiveCancelRequested && !_closeStarted)
        {
            // A multishot receive would keep filling buffers nobody reads.
            _receiveCancelRequested = true;
            Dispatcher.SubmitCancel(this, OperationKind.Receive);
        }

        if (_receiveActive && _receiveIntoPipe)
        {
            // A receive in flight still owns pipe memory: complete the writer when it comes back.
            _inputCompletionPending = true;
            return;
        }

        CompleteInputWriter();
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

    /// <summary>
    /// An operation's last completion arrived but its handler threw, perhaps before its bookkeeping: mark it over
    /// so the close does not wait for it. What it held (a send's pipe memory, a receive's) is released by the
    /// close path as for a failed operation.
    /// </summary>
    private void ForgetEndedOperation(OperationKind kind)
    {
        switch (kind)
        {
            case OperationKind.Receive:
                _receiveActive = false;
                _receiveCancelRequested = false;
                ReleaseReceivePin();
                if (_inputCompletionPending)
                {
                    _inputCompletionPending = false;
                    CompleteInputWriter();
                }

                break;
            case OperationKind.Send:
                // Nothing more is sent: the output ends with the abort's reason (the close may already be under way).
                _sendActive = false;
                if (!_outputReadPending)
                {
                    EndOutput(_abortReason);
                }

                break;
            case OperationKind.Shutdown:
                _shutdownActive = false;
                break;
            case OperationKind.Close:
                _closeCompleted = true;
                break;
        }
    }

    private void CompleteInputWriter()
    {
        if (!_inputWriterCompleted)
        {
            _inputWriterCompleted = true;
            if (_lendingInput is not null)
            {
                _lendingInput.CompleteWriter(_inputError);
            }
            else
            {
                Input!.Complete(_inputError);
            }
        }
    }
}
