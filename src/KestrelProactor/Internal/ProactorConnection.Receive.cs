using System.Buffers;
using System.Diagnostics;
using System.IO.Pipelines;
using System.Net.Sockets;
using KestrelProactor.Dispatching;
using Microsoft.AspNetCore.Connections;

namespace KestrelProactor.Internal;

internal sealed partial class ProactorConnection
{
    /// <summary>Tests only: runs where the input resumes after back-pressure (both continuations), to inject a fault there.</summary>
    internal static Action<ProactorConnection>? TestInputResumeHook { get; set; }

    /// <summary>Tests only: replaces a receive's result before it is handled, to produce errors a loopback peer cannot.</summary>
    internal static Func<ProactorConnection, IoResult, IoResult>? TestReceiveResultHook { get; set; }

    private bool _receiveActive;
    private bool _inputEnded;
    private bool _inputFlushPending;
    private bool _receiveCancelRequested;
    private bool _inputWriterCompleted;
    private bool _inputCompletionPending;
    private Exception? _inputError;

    /// <summary>The input when the backend lends its receive buffers (no copy); null when receives are copied into a pipe.</summary>
    private readonly ProactorInputPipe? _lendingInput;

    /// <summary>Buffers this connection may hold before further data is copied instead of lent.</summary>
    private readonly int _lentBufferCap;

    /// <summary>
    /// Tests only: record receive and read timing for a stalled test's failure message. Off by default, so the clock
    /// reads stay off the receive and read paths.
    /// </summary>
    internal static bool TimingForTests { get; set; }

    // Receive timing, for a stalled test's failure message: Stopwatch timestamps and tick counts, written on the
    // dispatcher only and read racily. The last receive completion and the longest gap between two; the receives
    // that found the buffer ring empty, how long they waited for a buffer in all and at most.
    private long _lastReceiveAt;
    private long _longestReceiveGap;
    private int _starvedReceives;
    private long _starvedSince;
    private long _starvedTotal;
    private long _longestStarved;

    public bool ReceiveActive => _receiveActive;

    /// <summary>Dispatcher: this connection's receive found the buffer ring empty and waits for a buffer.</summary>
    internal void OnReceiveStarved()
    {
        _starvedReceives++;
        if (TimingForTests)
        {
            _starvedSince = Stopwatch.GetTimestamp();
        }
    }

    /// <summary>Dispatcher: the starved receive went out again (or ended).</summary>
    internal void OnStarvedReceiveRetried()
    {
        if (_starvedSince != 0)
        {
            long waited = Stopwatch.GetTimestamp() - _starvedSince;
            _starvedSince = 0;
            _starvedTotal += waited;
            _longestStarved = Math.Max(_longestStarved, waited);
        }
    }

    private void NoteReceiveCompleted()
    {
        if (!TimingForTests)
        {
            return;
        }

        long now = Stopwatch.GetTimestamp();
        if (_lastReceiveAt != 0)
        {
            _longestReceiveGap = Math.Max(_longestReceiveGap, now - _lastReceiveAt);
        }

        _lastReceiveAt = now;
    }

    private string DescribeReceiveTimingForTests()
    {
        long now = Stopwatch.GetTimestamp();
        long starvedSince = _starvedSince;
        long last = _lastReceiveAt;
        return $"recvLastAgo={(last == 0 ? -1 : Milliseconds(now - last))}ms recvMaxGap={Milliseconds(_longestReceiveGap)}ms " +
               $"bufferWaits={_starvedReceives} starvedNow={(starvedSince == 0 ? 0 : Milliseconds(now - starvedSince))}ms " +
               $"starvedTotal={Milliseconds(_starvedTotal)}ms starvedMax={Milliseconds(_longestStarved)}ms";
    }

    internal static long Milliseconds(long ticks) => ticks * 1000 / Stopwatch.Frequency;

    /// <summary>True while a cancel of the receive in flight was asked for and its end has not come.</summary>
    public bool ReceiveCancelRequested => _receiveCancelRequested;

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
    /// A receive completed. With a provided buffer, <paramref name="data"/> holds the bytes: they are copied
    /// into the pipe (the backend returns the buffer right after). After a receive into rented pipe memory the
    /// bytes are already in place: <paramref name="data"/> views them on IOCP and is empty on the io_uring basic
    /// tier, and only the test receive hook reads it. <paramref name="more"/>: a multishot receive stays armed
    /// and will complete again.
    /// </summary>
    /// <returns>True when the connection took buffer <paramref name="lentBufferId"/> (it goes back when the application consumed it).</returns>
    public bool OnReceiveCompleted(IoResult result, ReadOnlySpan<byte> data, bool more, int lentBufferId)
    {
        NoteReceiveCompleted();
        if (!more)
        {
            _receiveActive = false;
            _receiveCancelRequested = false;
        }

        bool intoPipe = _receiveIntoPipe;
        ReleaseReceivePin();
        if (TestReceiveResultHook is { } hook)
        {
            result = hook(this, result);
        }

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
                    _lastReceiveFilled = result.Value >= _receiveMemoryLength;
                    Input!.Advance(result.Value);
                }
                else
                {
                    Input!.Write(data);
                }

                if (_copyingReader is { ReadStarted: false })
                {
                    _preReadBytes += result.Value;
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
                if (!_closeStarted)
                {
                    ProactorLog.ConnectionReadFin(_logger, ConnectionId);
                }

                EndInput(null);
                FireConnectionClosed();
                return false;
            }

            if (result.Error == SocketError.OperationAborted)
            {
                // Cancelled, either by the close path (which completes the input with the right reason) or to
                // pause a multishot receive for back-pressure; in that case the flush that completes re-arms,
                // unless it already has completed.
                if (!_inputFlushPending)
                {
                    ArmReceive();
                }

                return false;
            }

            if (_closeStarted)
            {
                // As the socket transport: once the connection is shutting down, that is why its receive ended.
                return false;
            }

            // As the socket transport: a reset (or a broken pipe) ends the input with ConnectionResetException; any
            // other error ends it with the socket error itself, logged as a connection error. Both at Debug.
            Exception error;
            if (IsConnectionResetError(result.Error))
            {
                ProactorLog.ConnectionReset(_logger, ConnectionId);
                error = new ConnectionResetException(result.ToString(), result.ToException());
            }
            else
            {
                ProactorLog.ConnectionError(_logger, ConnectionId, "receive", result.ToString());
                error = result.ToException();
            }

            EndInput(error);
            FireConnectionClosed();
            BeginClose(abortive: true);
            return false;
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

    /// <summary>The socket transport's reset errors: ECONNRESET, EPIPE, and on Windows WSAECONNABORTED.</summary>
    private static bool IsConnectionResetError(SocketError error)
        => error is SocketError.ConnectionReset or SocketError.Shutdown
           || (error == SocketError.ConnectionAborted && OperatingSystem.IsWindows());

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
