using System.Buffers;
using System.IO.Pipelines;
using System.Net.Sockets;
using System.Runtime.CompilerServices;
using KestrelProactor.Dispatching;
using Microsoft.AspNetCore.Connections;

namespace KestrelProactor.Internal;

internal sealed partial class ProactorConnection
{
    /// <summary>The connection's I/O state, for a test's failure message (read racily from another thread).</summary>
    internal string DescribeForTests()
        => $"{ConnectionId}: recvActive={_receiveActive} paused={_inputFlushPending} inputEnded={_inputEnded} " +
           $"sendActive={_sendActive} outputReadPending={_outputReadPending} outputEnded={_outputEnded} deferral={_deferral} " +
           $"unsent={_unsent.Length} closing={_closeStarted} {DescribeReceiveTimingForTests()} input=[{_lendingInput?.DescribeForTests()}]";

    private bool _sendActive;
    private bool _outputReadPending;
    private bool _outputEnded;
    private volatile bool _outputReadDeferred;
    private int _deferral;
    private int _sendsWithoutInput;
    private long _flushedWhileDeferred;
    private int _deferredWakeScheduled;
    private ReadOnlySequence<byte> _sendBuffer;
    private ReadOnlySequence<byte> _unsent;
    private bool _sendIsLast;
    private Action? _onOutputReadable;
    private ValueTaskAwaiter<ReadResult> _outputReadAwaiter;

    /// <summary>Reads what the application flushed; completes inline when data is already there.</summary>
    private void ReadOutput()
    {
        while (!_outputEnded && !_sendActive && !_outputReadPending)
        {
            ValueTask<ReadResult> read;
            ReadResult result;
            try
            {
                read = Output.ReadAsync();
                if (!read.IsCompleted)
                {
                    _outputReadPending = true;
                    _outputReadAwaiter = read.GetAwaiter();
                    // The output reader's scheduler is this dispatcher: the continuation runs here.
                    _outputReadAwaiter.UnsafeOnCompleted(_onOutputReadable ??= OnOutputReadableContinuation);
                    return;
                }

                result = read.GetAwaiter().GetResult();
            }
            catch (Exception ex) when (!_outputReadPending)
            {
                OnApplicationOutputError(ex);
                return;
            }

            if (!HandleOutput(result))
            {
                return;
            }
        }
    }

    private void OnOutputReadableContinuation()
    {
        try
        {
            _outputReadPending = false;
            ReadResult result;
            try
            {
                result = _outputReadAwaiter.GetResult();
            }
            catch (Exception ex)
            {
                _outputReadAwaiter = default;
                OnApplicationOutputError(ex);
                return;
            }

            _outputReadAwaiter = default;
            ProactorDispatcher.TestHandlerHook?.Invoke(this, OperationKind.Send);
            if (HandleOutput(result))
            {
                ReadOutput();
            }
        }
        catch (Exception ex)
        {
            // The pipe runs this as a dispatcher work item whose state is its own, so the dispatcher cannot
            // tell whose it is: this connection takes the fault itself, as from a completion handler.
            OnOutputFault(ex);
        }
    }

    /// <summary>
    /// The dispatcher's deferral (see <see cref="ProactorDispatcher.DeferOutputRead"/>) is over, a send's worth
    /// was flushed, or input arrived: read what the application flushed meanwhile. <paramref name="deferral"/> names
    /// the deferral that asked (0: whichever is current); a late call for an earlier one does nothing.
    /// </summary>
    public void ResumeDeferredOutputRead(int deferral = 0)
    {
        if (!_outputReadDeferred || (deferral != 0 && deferral != _deferral))
        {
            return;
        }

        _outputReadDeferred = false;
        Volatile.Write(ref _deferredWakeScheduled, 0);
        try
        {
            ReadOutput();
        }
        catch (Exception ex)
        {
            OnOutputFault(ex);
        }
    }

    /// <summary>
    /// A throw while reading the output or starting a send aborts this connection. The abort may find the close
    /// already under way, so the output is ended here unless a send or a read still holds it (their completions
    /// end it), and the close is moved on.
    /// </summary>
    private void OnOutputFault(Exception ex)
    {
        Dispatcher.OnHandlerFault(this, OperationKind.Send, operationEnded: false, ex);
        if (!_sendActive && !_outputReadPending)
        {
            EndOutput(_abortReason);
        }

        AdvanceClose();
    }

    /// <summary>
    /// The output's read threw: the application completed its output with an exception. That is a connection error,
    /// not a fault of the transport (a connection handler may end a connection so), and Kestrel's socket transport
    /// treats it as one: logged at Debug, the input ends with that exception, and the connection is aborted (RST,
    /// or FIN with <see cref="ProactorTransportOptions.FinOnError"/>).
    /// </summary>
    private void OnApplicationOutputError(Exception error)
    {
        ProactorLog.ConnectionError(_logger, ConnectionId, "output", error.Message, error);
        Interlocked.CompareExchange(ref _abortReason, new ConnectionAbortedException("The application completed the connection's output with an error.", error), null);
        _closeReason ??= error;
        EndInput(error);
        EndOutput(error);
        BeginClose(abortive: true);
    }

    /// <summary>Starts a send for what was read; returns true when the loop should read again at once.</summary>
    private bool HandleOutput(ReadResult result)
    {
        ReadOnlySequence<byte> buffer = result.Buffer;
        if (result.IsCanceled || _closeStarted)
        {
            // Abort cancels the pending read: nothing more is sent.
            Output.AdvanceTo(buffer.Start);
            EndOutput(_abortReason);
            return false;
        }

        if (!buffer.IsEmpty)
        {
            // One gathered send for everything flushed so far; a short send resubmits the rest.
            _sendBuffer = buffer;
            _unsent = buffer;
            _sendIsLast = result.IsCompleted;
            // Set once the submission is queued: if preparing it throws, no send is in flight for the close to wait on.
            Dispatcher.StartSend(this, buffer);
            _sendActive = true;
            return false;
        }

        Output.AdvanceTo(buffer.End);
        if (result.IsCompleted)
        {
            // The application completed its output and everything is sent: FIN, then close.
            EndOutput(null);
            return false;
        }

        return true;
    }

    public void OnSendCompleted(IoResult result)
    {
        _sendActive = false;
        if (!result.IsSuccess)
        {
            Output.AdvanceTo(_sendBuffer.Start);
            _sendBuffer = default;
            _unsent = default;
            OnSendFailed(result);
            return;
        }

        if (result.Value < _unsent.Length && !_closeStarted)
        {
            // Partial completion: the kernel took part of the data. Send the rest before reading more.
            _unsent = _unsent.Slice(result.Value);
            Dispatcher.StartSend(this, _unsent);
            _sendActive = true;
            return;
        }

        bool last = _sendIsLast;
        Output.AdvanceTo(_sendBuffer.End);
        _sendBuffer = default;
        _unsent = default;
        if (_closeStarted)
        {
            EndOutput(_abortReason);
            return;
        }

        if (last)
        {
            EndOutput(null);
            return;
        }

        // A second send in a row with no input between them: the application is streaming a response, not
        // answering a request. Hold the next read back a moment, so its next flushes go out in one send rather
        // than each waking the dispatcher for a small send of its own.
        if (_sendsWithoutInput < 2)
        {
            _sendsWithoutInput++;
        }

        if (_sendsWithoutInput < 2 || !TryDeferOutputRead())
        {
            ReadOutput();
        }
    }

    /// <summary>
    /// A send failed. Cancelled: the close that cancelled it goes on. Otherwise the connection ends as it does on
    /// Kestrel's socket transport: a reset (ECONNRESET, EPIPE) is logged as ConnectionReset and ends the input with
    /// <see cref="ConnectionResetException"/>; anything else is a ConnectionError and ends the input with the error.
    /// </summary>
    private void OnSendFailed(IoResult result)
    {
        Exception error;
        if (result.Error == SocketError.OperationAborted)
        {
            error = (Exception?)_abortReason ?? new ConnectionAbortedException("The send was cancelled.");
        }
        else if (IsResetError(result.Error))
        {
            ProactorLog.ConnectionReset(_logger, ConnectionId);
            error = new ConnectionResetException(result.ToString(), result.ToException());
        }
        else
        {
            SocketException exception = result.ToException();
            ProactorLog.ConnectionError(_logger, ConnectionId, "send", result.ToString(), exception);
            error = exception;
        }

        _closeReason ??= error;
        EndInput(error);
        EndOutput(error);
        BeginClose(abortive: true);
    }

    /// <summary>What the socket transport counts as the peer's reset; Windows reports some resets as aborts.</summary>
    private static bool IsResetError(SocketError error)
        => error is SocketError.ConnectionReset or SocketError.Shutdown
           || (error == SocketError.ConnectionAborted && OperatingSystem.IsWindows());

    /// <summary>
    /// Holds back the output read unless a send's worth is already waiting. The hold ends when the dispatcher's
    /// delay runs out, when the application has flushed <see cref="_streamingSendSize"/> bytes (see
    /// <see cref="OnApplicationFlushed"/>), when input arrives, or when the close starts.
    /// </summary>
    private bool TryDeferOutputRead()
    {
        if (!Dispatcher.DefersOutputReads)
        {
            return false;
        }

        long waiting = 0;
        bool read;
        ReadResult peek;
        try
        {
            read = Output.TryRead(out peek);
        }
        catch (Exception ex)
        {
            OnApplicationOutputError(ex);
            return true;
        }

        if (read)
        {
            waiting = peek.Buffer.Length;
            if (peek.IsCompleted || peek.IsCanceled || waiting >= _streamingSendSize)
            {
                if (HandleOutput(peek))
                {
                    ReadOutput();
                }

                return true;
            }

            // Nothing consumed or examined: the next read returns these bytes at once.
            Output.AdvanceTo(peek.Buffer.Start, peek.Buffer.Start);
        }

        int deferral = _deferral + 1;
        if (deferral == 0)
        {
            deferral = 1;
        }

        Dispatcher.DeferOutputRead(this, deferral);
        _deferral = deferral;
        Volatile.Write(ref _flushedWhileDeferred, waiting);
        // Published last: a flush that sees it counts into the total above.
        _outputReadDeferred = true;
        return true;
    }

    /// <summary>
    /// The application flushed <paramref name="bytes"/>, or completed its output (any thread). While the output read
    /// is held back, a send's worth, or the end of the output, ends the hold at once: before the pipe's back-pressure
    /// would stop the application, and without delaying the response's last bytes.
    /// </summary>
    internal void OnApplicationFlushed(long bytes, bool completed = false)
    {
        if (!_outputReadDeferred)
        {
            return;
        }

        if ((Interlocked.Add(ref _flushedWhileDeferred, bytes) >= _streamingSendSize || completed)
            && Interlocked.Exchange(ref _deferredWakeScheduled, 1) == 0)
        {
            Dispatcher.Schedule(static state => ((ProactorConnection)state!).ResumeDeferredOutputRead(), this);
        }
    }

    /// <summary>Input arrived: whatever is sent next answers it, so it goes out at once.</summary>
    private void OnInputArrived()
    {
        _sendsWithoutInput = 0;
        ResumeDeferredOutputRead();
    }

    /// <summary>
    /// The send side is done. Graceful (no error, not aborting): shut down the write side (FIN) and close.
    /// Otherwise just close. The output reader is completed here, when no send holds its memory any more.
    /// </summary>
    private void EndOutput(Exception? error)
    {
        if (_outputEnded)
        {
            return;
        }

        _outputEnded = true;
        // Without the error, as Kestrel's socket transport does: the application's next flush then reports
        // IsCompleted instead of throwing, and learns of a reset from its input and ConnectionClosed. Completed
        // with the error, a flush that threw inside Kestrel's HTTP/2 frame writer left a stream that never
        // completed, and the host's stop waited for it for ever (about half the stops after timed h2load runs).
        Output.Complete();
        if (error is null && !_closeStarted)
        {
            _finSent = true;
            LogCloseKind(reset: false, "The application completed the connection's output.");
            _shutdownActive = true;
            Dispatcher.SubmitShutdownWrite(this);
            return;
        }

        BeginClose(abortive: _abortReason is not null);
    }

    public void OnShutdownCompleted(IoResult result)
    {
        _shutdownActive = false;
        // ENOTCONN here means the peer already reset: either way the connection closes now.
        BeginClose(abortive: false);
    }
}
