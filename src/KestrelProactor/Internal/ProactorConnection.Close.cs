using KestrelProactor.Dispatching;
using Microsoft.AspNetCore.Connections;

namespace KestrelProactor.Internal;

internal sealed partial class ProactorConnection
{
    // Kestrel's switch (shared with its socket transport): abort with FIN instead of RST.
    private static readonly bool s_finOnError =
        AppContext.TryGetSwitch("Microsoft.AspNetCore.Server.Kestrel.FinOnError", out bool finOnError) && finOnError;

    private int _abortRequested;
    private ConnectionAbortedException? _abortReason;
    private bool _shutdownActive;
    private bool _closeStarted;
    private bool _closeSubmitted;
    private bool _closeCompleted;
    private bool _finished;
    private int _releasedAfterFailure;
    private bool _memoryKeptForKernel;
    private Task? _connectionClosedTask;

    /// <summary>Closes with RST from any thread; pending receives and sends are cancelled.</summary>
    public override void Abort(ConnectionAbortedException abortReason)
    {
        // Kestrel passes null when it has no reason to give.
        abortReason ??= new ConnectionAbortedException("The connection was aborted.");
        if (Interlocked.CompareExchange(ref _abortReason, abortReason, null) is not null)
        {
            return;
        }

        Volatile.Write(ref _abortRequested, 1);
        if (Volatile.Read(ref _started) != 0)
        {
            Dispatcher.Schedule(static state => ((ProactorConnection)state!).AbortOnDispatcher(), this);
        }

        // Logged last: a logger that throws must not leave the abort half done (a second call returns early above).
        ProactorLog.ConnectionWriteRst(_logger, ConnectionId, abortReason.Message);
    }

    private void AbortOnDispatcher()
    {
        if (_closeCompleted)
        {
            return;
        }

        EndInput(_abortReason);
        BeginClose(abortive: true);
    }

    /// <summary>
    /// Starts closing: cancels what is in flight and, once the last of it has completed, closes the descriptor.
    /// Abortive closes set a zero linger time first, so the peer sees RST.
    /// </summary>
    private void BeginClose(bool abortive)
    {
        if (!_closeStarted)
        {
            _closeStarted = true;
            if (abortive && !s_finOnError)
            {
                Dispatcher.SetAbortiveClose(this);
            }

            if (_receiveActive)
            {
                Dispatcher.SubmitCancel(this, OperationKind.Receive);
            }

            if (_sendActive)
            {
                Dispatcher.SubmitCancel(this, OperationKind.Send);
            }

            EndInput(_abortReason ?? new ConnectionAbortedException("The connection is closing."));
            if (_outputReadPending)
            {
                // The read's continuation sees IsCanceled and ends the output.
                Output.CancelPendingRead();
            }
            else if (!_sendActive)
            {
                EndOutput(_abortReason);
            }
        }

        AdvanceClose();
    }

    /// <summary>Called after every completion of this connection while it closes.</summary>
    public void AdvanceClose()
    {
        if (!_closeStarted || _finished)
        {
            return;
        }

        if (!_closeSubmitted)
        {
            if (_receiveActive || _sendActive || _shutdownActive || !_outputEnded || _outputReadPending)
            {
                return;
            }

            _closeSubmitted = true;
            Dispatcher.SubmitClose(this);
            return;
        }

        if (_closeCompleted && Dispatcher.InFlightOf(this) == 0)
        {
            Finish();
        }
    }

    public void OnCloseCompleted(IoResult result)
    {
        _closeCompleted = true;
        AdvanceClose();
    }

    private void Finish()
    {
        _finished = true;
        CompleteInputWriter();
        Dispatcher.Unregister(this);
        FireConnectionClosed();
        CompleteClosedAfterCallbacks();
    }

    /// <summary>
    /// The dispatcher ended under this connection (it failed, or a stop ran out of time; see
    /// <see cref="IOperationOwner.OnDispatcherFailed"/>): its kernel queue is closed, so nothing will complete here.
    /// Close the descriptor directly, end both pipes with the error and fire <see cref="ConnectionClosed"/>, so
    /// Kestrel sees the connection end, the application's pending read and flush complete, and
    /// <see cref="DisposeAsync"/> returns. When <paramref name="operationsMayBeLive"/> and a receive or a send may
    /// still be using pipe memory, the pipes' blocks are quarantined first: they never go back to the pool. Runs on
    /// the ended dispatcher's thread, or on a thread whose work item for this connection came too late to run there;
    /// once only.
    /// </summary>
    void IOperationOwner.OnDispatcherFailed(Exception error, bool operationsMayBeLive)
    {
        if (Interlocked.Exchange(ref _releasedAfterFailure, 1) != 0 || _finished)
        {
            return;
        }

        _finished = true;
        bool keepInput = operationsMayBeLive && _receiveIntoPipe;
        bool keepOutput = operationsMayBeLive && _sendActive;
        if (_sendActive && !Socket.IsClosed)
        {
            // The pages of a send (zero-copy ones above all) sit in the socket's queue until the peer acknowledges
            // them: a zero linger time makes the close below drop the queue instead of sending it on.
            Dispatcher.SetAbortiveClose(this);
        }

        // The descriptor first, so the kernel ends whatever operation still points into pipe memory. One already
        // handed to a close operation is not ours to close again.
        if (!Socket.IsClosed)
        {
            Socket.Dispose();
        }

        if (keepInput || keepOutput)
        {
            // Before the pipes complete: the blocks they give back then are kept, with this connection, for good.
            _memoryKeptForKernel = true;
            _kernelMemory.Quarantine();
            Dispatcher.KeepForKernel(this, ConnectionId);
        }

        var reason = error as ConnectionAbortedException
            ?? new ConnectionAbortedException("The connection's dispatcher stopped on an unrecoverable error.", error);
        Interlocked.CompareExchange(ref _abortReason, reason, null);
        try
        {
            // With inline scheduling these run application continuations on this thread.
            _inputError ??= reason;
            if (!keepInput)
            {
                // A kept receive's block stays pinned too: the kernel may write into it, so it must not move.
                ReleaseReceivePin();
            }

            CompleteInputWriter();
            if (!_outputEnded)
            {
                _outputEnded = true;
                Output.Complete(reason);
            }
        }
        finally
        {
            FireConnectionClosed();
            CompleteClosedAfterCallbacks();
        }
    }

    /// <summary>DisposeAsync returns (and disposes the token source) only after the ConnectionClosed callbacks have run.</summary>
    private void CompleteClosedAfterCallbacks()
    {
        _connectionClosedTask!.ContinueWith(
            static (_, state) => ((ProactorConnection)state!)._closedTcs.TrySetResult(),
            this,
            CancellationToken.None,
            TaskContinuationOptions.ExecuteSynchronously,
            TaskScheduler.Default);
    }

    /// <summary>
    /// Fires <see cref="ConnectionClosed"/> once: when the peer ends its side (FIN or reset; Kestrel then aborts
    /// the request in progress, as with its socket transport), or else when the descriptor is closed.
    /// Dispatcher thread only.
    /// </summary>
    private void FireConnectionClosed()
    {
        if (_connectionClosedTask is not null)
        {
            return;
        }

        // The callbacks are application code: keep them off the dispatcher thread.
        _connectionClosedTask = Task.Factory.StartNew(
            static state =>
            {
                var connection = (ProactorConnection)state!;
                try
                {
                    connection._connectionClosedSource.Cancel();
                }
                catch (Exception ex)
                {
                    // A ConnectionClosed callback threw: that is the application's bug, not a reason to crash.
                    ProactorLog.ConnectionClosedCallbackFault(connection._logger, connection.ConnectionId, ex);
                }
            },
            this,
            CancellationToken.None,
            TaskCreationOptions.DenyChildAttach,
            TaskScheduler.Default);
    }
}
