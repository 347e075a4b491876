using KestrelProactor.Dispatching;
using Microsoft.AspNetCore.Connections;

namespace KestrelProactor.Internal;

internal sealed partial class ProactorConnection
{
    private const string GracefulAbortMessage = "The connection was closed gracefully: the client ended it, or the application aborted it without a reason.";

    /// <summary>Tests only: runs in <see cref="Start"/> between publishing "started" and scheduling the start.</summary>
    internal static Action<ProactorConnection>? TestStartHook { get; set; }

    /// <summary>
    /// The first abort's reason wins: Kestrel's <c>Abort</c> (any thread), an application's output error, a handler
    /// fault or the dispatcher's failure. Published with a full fence (see <see cref="Abort"/>).
    /// </summary>
    private ConnectionAbortedException? _abortReason;

    /// <summary>The one reason an abort without a reason publishes: the abort is graceful when it is the one that won.</summary>
    private ConnectionAbortedException? _gracefulAbortReason;

    // Dispatcher thread only from here on.
    private bool _registered;
    private Exception? _closeReason;
    private bool _closeLogged;
    private bool _finSent;
    private bool _shutdownActive;
    private bool _closeStarted;
    private bool _closeSubmitted;
    private bool _closeCompleted;
    private bool _finished;
    private int _releasedAfterFailure;
    private bool _memoryKeptForKernel;

    /// <summary>For tests: this connection's pipe memory was kept out of the pool for good when its dispatcher failed.</summary>
    internal bool MemoryKeptForKernelForTests => _memoryKeptForKernel;
    private Task? _connectionClosedTask;

    /// <summary>
    /// Ends the connection from any thread; pending receives and sends are cancelled. With a reason the peer gets RST
    /// (FIN with <see cref="ProactorTransportOptions.FinOnError"/>); without one, which is how Kestrel's HTTP/1.1 and
    /// HTTP/2 connections say that the client closed gracefully, it gets FIN, as from Kestrel's socket transport.
    /// </summary>
    public override void Abort(ConnectionAbortedException abortReason)
    {
        // Racing graceful aborts publish the same instance, so whichever wins, the abort is recognised as graceful.
        abortReason ??= LazyInitializer.EnsureInitialized(ref _gracefulAbortReason, static () => new ConnectionAbortedException(GracefulAbortMessage));

        // A full fence, as is Start's exchange of _started: either this thread sees the start published and schedules
        // the abort, or StartOnDispatcher (which runs after that exchange) sees the reason. Two volatile accesses
        // (a store then a load) could be reordered, and then neither side would abort.
        if (Interlocked.CompareExchange(ref _abortReason, abortReason, null) is not null)
        {
            return;
        }

        if (Volatile.Read(ref _started) != 0)
        {
            Dispatcher.Schedule(static state => ((ProactorConnection)state!).AbortOnDispatcher(), this);
        }
    }

    private void AbortOnDispatcher()
    {
        // Scheduled before the start ran (an abort from another thread between Start's publication and its
        // scheduling): the connection is not in the operation table yet, so it has no token to close with.
        // StartOnDispatcher sees the request and comes back here once it is.
        if (!_registered || _closeCompleted)
        {
            return;
        }

        ConnectionAbortedException reason = Volatile.Read(ref _abortReason)!;
        EndInput(reason);
        BeginClose(abortive: !ReferenceEquals(reason, Volatile.Read(ref _gracefulAbortReason)));
    }

    /// <summary>
    /// Starts closing: cancels what is in flight and, once the last of it has completed, closes the descriptor.
    /// An abortive close sets a zero linger time first, so the peer sees RST, unless
    /// <see cref="ProactorTransportOptions.FinOnError"/> asks for FIN or FIN is already on its way.
    /// </summary>
    private void BeginClose(bool abortive)
    {
        if (!_closeStarted)
        {
            _closeStarted = true;
            bool reset = abortive && !_finSent && !Dispatcher.Options.FinOnError;
            LogCloseKind(reset);
            if (reset)
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

    /// <summary>The socket transport's ConnectionWriteFin or ConnectionWriteRst, once per connection, with the reason.</summary>
    private void LogCloseKind(bool reset, string? reason = null)
    {
        if (_closeLogged)
        {
            return;
        }

        _closeLogged = true;
        reason ??= (_closeReason ?? _abortReason ?? _inputError)?.Message ?? "The connection is closing.";
        if (reset)
        {
            ProactorLog.ConnectionWriteRst(_logger, ConnectionId, reason);
        }
        else
        {
            ProactorLog.ConnectionWriteFin(_logger, ConnectionId, reason);
        }
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
            if (_receiveActive || _sendActive || _shutdownActive || !_outputEnded || _outputReadPending || !TryRetireApplicationViews())
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
        if (!result.IsSuccess)
        {
            // The descriptor is ours alone until this close: a failure here (EBADF) means someone else closed it.
            ProactorLog.ConnectionError(_logger, ConnectionId, "close", result.ToString(), result.ToException());
        }

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

        // The application's views of the descriptor first (they wait for a call in progress on them), then the
        // descriptor, so the kernel ends whatever operation still points into pipe memory. One already handed to a
        // close operation is not ours to close again.
        RetireApplicationViewsNow();
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
                // Without the error, as when a send fails (EndOutput): a flush that threw inside Kestrel's HTTP/2
                // frame writer leaves a stream that never completes, and the host's stop waits for it for ever. The
                // application learns of the end from its input, which ends with the reason, and ConnectionClosed.
                _outputEnded = true;
                Output.Complete();
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
