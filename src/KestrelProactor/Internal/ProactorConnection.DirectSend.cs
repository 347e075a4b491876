using System.Buffers;
using System.IO.Pipelines;
using System.Net.Sockets;
using KestrelProactor.Dispatching;

namespace KestrelProactor.Internal;

/// <summary>
/// Direct sends (<see cref="ProactorTransportOptions.DirectSend"/>). In the thread-pool mode a flush completes the
/// dispatcher's pending output read, and the read's continuation normally runs on the dispatcher: a wake-up (a
/// system call on the flushing thread, a context switch) before the send is even queued. With direct sends the
/// output pipe's reader scheduler is this connection's <see cref="OutputScheduler"/>: when the dispatcher sleeps and
/// the connection has nothing in flight, the flushing thread runs the continuation itself and sends with one
/// non-blocking system call. What the socket does not take at once goes to the dispatcher, which sends it through
/// the ring as before.
/// <para>
/// Ownership of the output (the pipe's reader, and the socket's send side), in <see cref="_outputOwner"/>:
/// <list type="bullet">
/// <item><c>Dispatcher</c>: the dispatcher reads, sends through the ring, holds a read back, or has ended the output.</item>
/// <item><c>Parked</c>: the dispatcher's output read is pending and nothing of the output is in flight: every byte
/// read so far was sent. Published before the read's continuation is registered, so whoever the continuation is
/// scheduled by finds it.</item>
/// <item><c>Flusher</c>: a flushing thread won Parked → Flusher (a compare-exchange: one winner) and runs the read's
/// continuation. Until it moves Flusher → Parked again (its own read pending, everything sent) or Flusher → Dispatcher
/// (handing the rest back through a work item), it alone reads the pipe and sends; the dispatcher touches neither, and
/// only cancels the read (thread-safe) when it closes.</item>
/// <item><c>Ended</c>: final, swapped in (an exchange) by the dispatcher's failure (<c>OnDispatcherFailed</c>), so no
/// flusher can claim the output afterwards. When the swap found Flusher, the failure leaves the pipe's reader to that
/// flusher: its next move from Flusher fails, and it completes the reader itself once its send is over, so the pipe's
/// blocks cannot go back to the pool under its send and nothing has to be kept for good.</item>
/// </list>
/// So bytes go out in pipe order, one sender at a time: a direct send starts only from Parked, when no ring send is in
/// flight, and a ring send only from a read of the dispatcher's, after the flusher gave the output back. The
/// dispatcher's <see cref="_outputReadPending"/> stays true from its read's start until the continuation or the
/// hand-back runs on it, so a close waits (<see cref="AdvanceClose"/>) and never closes the descriptor under a
/// flusher's send: the ring's close ignores the handle's reference count. The backend's reference on the handle
/// covers a dispatcher's failure only, which disposes the handle (a deferred close while referenced).
/// </para>
/// </summary>
internal sealed partial class ProactorConnection
{
    private const int OutputOwnedByDispatcher = 0;
    private const int OutputParked = 1;
    private const int OutputOwnedByFlusher = 2;
    private const int OutputEnded = 3;

    /// <summary>The option is on, the scheduling is the thread pool's, and the backend can send from any thread.</summary>
    private readonly bool _directSend;

    private int _outputOwner;

    /// <summary>
    /// A test hook: runs on a flushing thread that passed the checks for a direct send, before its claim of the output
    /// (a test holds a flusher there while the dispatcher fails).
    /// </summary>
    internal static Action<ProactorConnection>? TestDirectSendClaimHook { get; set; }

    /// <summary>A test hook: runs on the flushing thread right after it claimed the output, before the read's continuation.</summary>
    internal static Action<ProactorConnection>? TestDirectSendClaimedHook { get; set; }

    // The connection whose output read this thread claimed and whose continuation it is running: that continuation is
    // the flusher's whatever the owner says by the time it runs (a dispatcher failure may have ended the output
    // meanwhile, and the dispatcher's path would then reach a ring already torn down).
    [ThreadStatic]
    private static ProactorConnection? t_flusherOf;

    // What a flusher hands back with the output: written before its Volatile write of Dispatcher, read by the work item.
    private IoResult _handedBackSendError;
    private Exception? _handedBackReadError;
    private Exception? _handedBackFault;

    /// <summary>
    /// Called through the output pipe (any thread) when the dispatcher's pending output read completes: runs the
    /// continuation on the calling thread when it may send directly, else schedules it on the dispatcher.
    /// </summary>
    private bool TryRunOutputContinuationHere(Action<object?> continuation, object? state)
    {
        ProactorDispatcher dispatcher = Dispatcher;
        // A connection streaming a response (see OnSendCompleted; a benign race, a hint only) goes through the ring,
        // whose held-back reads gather its flushes. An awake dispatcher batches the send with its pass for less than
        // a system call here costs.
        if (Volatile.Read(ref _outputOwner) != OutputParked
            || !dispatcher.IsBlockedInWait
            || dispatcher.IsOnDispatcherThread
            || (Volatile.Read(ref _sendsWithoutInput) >= 2 && dispatcher.DefersOutputReads))
        {
            return false;
        }

        TestDirectSendClaimHook?.Invoke(this);
        if (Interlocked.CompareExchange(ref _outputOwner, OutputOwnedByFlusher, OutputParked) != OutputParked)
        {
            return false;
        }

        // The pipe's continuation: OnOutputReadableContinuation, which finds this thread the flusher.
        TestDirectSendClaimedHook?.Invoke(this);
        t_flusherOf = this;
        try
        {
            continuation(state);
        }
        finally
        {
            t_flusherOf = null;
        }

        return true;
    }

    /// <summary>
    /// The read's continuation, on the flushing thread that owns the output: sends what was flushed, then parks the
    /// read again or hands the output back to the dispatcher. Never throws into the application's flush.
    /// </summary>
    private bool IsFlusherThread => ReferenceEquals(t_flusherOf, this);

    private void SendFromFlusher()
    {
        ReadResult result;
        try
        {
            result = _outputReadAwaiter.GetResult();
        }
        catch (Exception ex)
        {
            // The application completed its output with an error: the dispatcher ends the connection for it.
            _outputReadAwaiter = default;
            HandBackOutput(readError: ex);
            return;
        }

        _outputReadAwaiter = default;
        ValueTask<ReadResult> next;
        try
        {
            ProactorDispatcher.TestHandlerHook?.Invoke(this, OperationKind.Send);
            while (true)
            {
                ReadOnlySequence<byte> buffer = result.Buffer;
                if (result.IsCanceled || buffer.IsEmpty || Volatile.Read(ref _outputOwner) == OutputEnded)
                {
                    // Cancelled: the close asked for it, and the dispatcher knows. Empty: the writer completed (FIN
                    // is the dispatcher's). Ended: the dispatcher failed, nothing more is sent (the hand-back completes
                    // the reader). Nothing consumed: the dispatcher's next read returns the same bytes.
                    Output.AdvanceTo(buffer.Start, buffer.Start);
                    HandBackOutput();
                    return;
                }

                if (!Dispatcher.TrySendDirect(this, buffer, out IoResult sent))
                {
                    Output.AdvanceTo(buffer.Start, buffer.Start);
                    HandBackOutput();
                    return;
                }

                if (!sent.IsSuccess)
                {
                    Output.AdvanceTo(buffer.Start, buffer.Start);
                    // EAGAIN (the socket's buffer is full) and EINTR send nothing: the ring sends once there is room.
                    // Any other error ends the connection as a failed ring send does.
                    bool retry = sent.Error is SocketError.WouldBlock or SocketError.Interrupted;
                    HandBackOutput(sendError: retry ? default : sent);
                    return;
                }

                // Counted as the dispatcher counts its sends, a benign race with its reset when input arrives.
                if (_sendsWithoutInput < 2)
                {
                    _sendsWithoutInput++;
                }

                if (sent.Value < buffer.Length)
                {
                    // A short send: the rest, in order, through the ring.
                    SequencePosition rest = buffer.GetPosition(sent.Value);
                    Output.AdvanceTo(rest, rest);
                    HandBackOutput();
                    return;
                }

                Output.AdvanceTo(buffer.End);
                if (result.IsCompleted)
                {
                    HandBackOutput();
                    return;
                }

                try
                {
                    next = Output.ReadAsync();
                    if (!next.IsCompleted)
                    {
                        break;
                    }

                    // A cancel (the close) completes it, or the writer's completion on another thread.
                    result = next.GetAwaiter().GetResult();
                }
                catch (Exception ex) when (ex is not InvalidOperationException)
                {
                    // The application completed its output with an error meanwhile: its error, not the transport's.
                    HandBackOutput(readError: ex);
                    return;
                }
            }
        }
        catch (Exception ex)
        {
            // Not expected: the pipe's reader was completed under this thread (InvalidOperationException), or a bug.
            HandBackOutput(fault: ex);
            return;
        }

        // Everything read is sent: the read is the dispatcher's pending read again, claimable by the next flush.
        // Published before the continuation is registered (see the class remarks).
        _outputReadAwaiter = next.GetAwaiter();
        if (Interlocked.CompareExchange(ref _outputOwner, OutputParked, OutputOwnedByFlusher) != OutputOwnedByFlusher)
        {
            // Ended: the dispatcher failed during the send.
            _outputReadAwaiter = default;
            CompleteOutputAfterFailure();
            return;
        }

        _outputReadAwaiter.UnsafeOnCompleted(_onOutputReadable!);
    }

    /// <summary>Gives the output back to the dispatcher, which carries on from its read (see <see cref="OnOutputHandedBack"/>).</summary>
    private void HandBackOutput(IoResult sendError = default, Exception? readError = null, Exception? fault = null)
    {
        _handedBackSendError = sendError;
        _handedBackReadError = readError;
        _handedBackFault = fault;
        // Pairs with the dispatcher's read of the owner: everything this thread did to the pipe happens before.
        if (Interlocked.CompareExchange(ref _outputOwner, OutputOwnedByDispatcher, OutputOwnedByFlusher) != OutputOwnedByFlusher)
        {
            // Ended: the dispatcher failed during the send, and released the connection without the output's reader.
            _handedBackSendError = default;
            _handedBackReadError = null;
            _handedBackFault = null;
            CompleteOutputAfterFailure();
            return;
        }

        Dispatcher.Schedule(static state => ((ProactorConnection)state!).OnOutputHandedBack(), this);
    }

    /// <summary>
    /// A flusher's last step when the dispatcher failed under it (the owner is Ended): completes the output's reader,
    /// as <c>OnDispatcherFailed</c> does when no flusher owns it; once the application's writer is complete too, the
    /// pipe's blocks go back to the pool. Nothing of the pipe is touched after this.
    /// </summary>
    private void CompleteOutputAfterFailure()
    {
        try
        {
            Output.Complete();
        }
        catch (Exception ex)
        {
            // Not expected (completing a reader does not throw); the connection is released already: log only.
            ProactorLog.ConnectionError(_logger, ConnectionId, "direct send", ex.Message, ex);
        }
    }

    /// <summary>Dispatcher thread: the flusher's read is over; go on as its continuation would have here.</summary>
    private void OnOutputHandedBack()
    {
        _outputReadPending = false;
        IoResult sendError = _handedBackSendError;
        Exception? readError = _handedBackReadError;
        Exception? fault = _handedBackFault;
        _handedBackSendError = default;
        _handedBackReadError = null;
        _handedBackFault = null;
        try
        {
            if (readError is not null)
            {
                OnApplicationOutputError(readError);
            }
            else if (fault is not null)
            {
                OnOutputFault(fault);
            }
            else if (!sendError.IsSuccess)
            {
                OnSendFailed(sendError);
            }
            else if (_closeStarted)
            {
                // The close cancelled the read the flusher had (its cancel is spent): the output ends here.
                EndOutput(_abortReason);
            }
            else
            {
                ReadOutput();
            }
        }
        catch (Exception ex)
        {
            OnOutputFault(ex);
        }

        AdvanceClose();
    }

    /// <summary>The output pipe's reader scheduler with direct sends: the flushing thread, or the dispatcher.</summary>
    private sealed class OutputScheduler(ProactorConnection connection) : PipeScheduler
    {
        public override void Schedule(Action<object?> action, object? state)
        {
            if (!connection.TryRunOutputContinuationHere(action, state))
            {
                connection.Dispatcher.Schedule(action, state);
            }
        }
    }
}
