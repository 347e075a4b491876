using System.Buffers;
using System.IO.Pipelines;
using System.Net.Sockets;
using System.Runtime.CompilerServices;
using KestrelProactor.Dispatching;
using Microsoft.AspNetCore.Connections;

namespace KestrelProactor.Internal;

internal sealed partial class ProactorConnection
{
    private bool _sendActive;
    private bool _outputReadPending;
    private bool _outputEnded;
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
            ValueTask<ReadResult> read = Output.ReadAsync();
            if (!read.IsCompleted)
            {
                _outputReadPending = true;
                _outputReadAwaiter = read.GetAwaiter();
                // The output reader's scheduler is this dispatcher: the continuation runs here.
                _outputReadAwaiter.UnsafeOnCompleted(_onOutputReadable ??= OnOutputReadableContinuation);
                return;
            }

            if (!HandleOutput(read.GetAwaiter().GetResult()))
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
            ReadResult result = _outputReadAwaiter.GetResult();
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
            // tell whose it is: this connection takes the fault itself, as from a completion handler. The abort
            // may find the close already under way, so the output is ended here unless a send or a read still
            // holds it (their completions end it), and the close is moved on.
            Dispatcher.OnHandlerFault(this, OperationKind.Send, operationEnded: false, ex);
            if (!_sendActive && !_outputReadPending)
            {
                EndOutput(_abortReason);
            }

            AdvanceClose();
        }
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
            Dispatcher.SubmitSend(this, buffer);
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
            if (result.Error != SocketError.OperationAborted)
            {
                ProactorLog.ConnectionError(_logger, ConnectionId, "send", result.ToString());
            }

            EndOutput((Exception?)_abortReason ?? new ConnectionResetException(result.ToString(), result.ToException()));
            BeginClose(abortive: true);
            return;
        }

        if (result.Value < _unsent.Length && !_closeStarted)
        {
            // Partial completion: the kernel took part of the data. Send the rest before reading more.
            _unsent = _unsent.Slice(result.Value);
            Dispatcher.SubmitSend(this, _unsent);
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

        ReadOutput();
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
            ProactorLog.ConnectionWriteFin(_logger, ConnectionId);
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
