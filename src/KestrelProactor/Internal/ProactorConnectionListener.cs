using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using System.Threading.Channels;
using KestrelProactor.Dispatching;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Server.Kestrel.Transport.Sockets;
using Microsoft.Extensions.Logging;

namespace KestrelProactor.Internal;

/// <summary>
/// A bound endpoint. Accepts run on one dispatcher (multishot where the kernel has it); each accepted socket
/// becomes a connection on the next dispatcher in turn, so connections spread over every ring while the
/// endpoint keeps one listen socket (one backlog, no SO_REUSEPORT imbalance, and Unix sockets and inherited
/// handles work the same way).
/// <para>
/// If the accepting dispatcher fails, the listen socket moves to a surviving dispatcher and accepting goes on
/// there: Kestrel cannot bind an endpoint again by itself, so a listener that died with its dispatcher would
/// leave the endpoint unserved until the process restarts, over a fault that cost only one ring. Where no
/// dispatcher can take it (all have failed, or the backend cannot move a listen socket), the listen socket is
/// closed, so the port is not left bound with nobody accepting, and Kestrel's next accept fails with the reason.
/// </para>
/// </summary>
internal sealed class ProactorConnectionListener : IConnectionListener, IOperationOwner
{
    private const int MaxAcceptRetryDelayMs = 1000;

    private readonly ProactorBackend _backend;
    private readonly Lock _moveGate = new();
    private volatile ProactorDispatcher _acceptDispatcher;
    private readonly Socket _listenSocket;
    private readonly ProactorTransportOptions _options;
    private readonly ILogger _logger;
    private readonly Channel<ProactorConnection> _accepted;
    private readonly ProactorListenerGroup? _group;
    private readonly TaskCompletionSource _acceptStopped = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly bool _isTcp;
    private volatile bool _unbinding;
    private Func<bool>? _isUnbinding;
    private bool _acceptStopHandled;
    private int _acceptingEnded;
    private int _retryDelayMs;
    private Timer? _retryTimer;
    private ProactorDispatcher? _registeredOn;

    private ProactorConnectionListener(
        ProactorBackend backend, ProactorDispatcher acceptDispatcher, Socket listenSocket, ProactorTransportOptions options, ILogger logger,
        ProactorListenerGroup? group = null)
    {
        _backend = backend;
        _acceptDispatcher = acceptDispatcher;
        _group = group;
        // A group's members share the group's queue, each writing from its own dispatcher.
        _accepted = group?.Accepted ?? Channel.CreateUnbounded<ProactorConnection>(
            new UnboundedChannelOptions { SingleReader = true, SingleWriter = true, AllowSynchronousContinuations = false });
        _listenSocket = listenSocket;
        _options = options;
        _logger = logger;
        EndPoint = listenSocket.LocalEndPoint!;
        _isTcp = listenSocket.ProtocolType == ProtocolType.Tcp || EndPoint is IPEndPoint;
    }

    public EndPoint EndPoint { get; }

    /// <summary>The dispatcher this listener accepts on (read racily, for tests).</summary>
    internal ProactorDispatcher AcceptDispatcher => _acceptDispatcher;

    /// <summary>Connections this listener accepted and made (read racily, for tests).</summary>
    internal long AcceptedConnections { get; private set; }

    public OperationToken Token { get; set; }

    public string DisplayName => EndPoint.ToString() ?? "listener";

    /// <summary>The listen socket's descriptor, for the backend's accept operation.</summary>
    public SafeHandle ListenHandle => _listenSocket.SafeHandle;

    /// <summary>The backend's per-listener state (IOCP: the accept slot); null until the backend sets it.</summary>
    public object? BackendState { get; set; }

    public bool UseMultishot => !_options.DisableMultishot;

    /// <summary>
    /// True while an accept, or the cancel sent at unbind, is in flight (dispatcher thread only). It is read from
    /// the operation table, which counts every submission and final completion whatever a handler does, not
    /// kept by this listener: a handler or fault handling of its own that throws halfway cannot leave it stale,
    /// so an unbind never waits for an accept that is no longer there.
    /// </summary>
    private bool AcceptInFlight => _acceptDispatcher.InFlightOf(this) != 0;

    /// <summary>
    /// A test hook: runs first in this listener's <see cref="IOperationOwner.OnHandlerFault"/>. A throw takes the
    /// path of a bug in the listener's own fault handling, which the dispatcher can only log.
    /// </summary>
    internal static Action<ProactorConnectionListener>? TestFaultHook { get; set; }

    public static IConnectionListener Bind(ProactorBackend backend, EndPoint endpoint, ProactorTransportOptions options, ILogger logger)
    {
        if (options.AcceptOnEveryDispatcher && ProactorListenerGroup.CanSpread(endpoint)
            && ProactorListenerGroup.LiveDispatchers(backend) is { Length: > 1 } dispatchers)
        {
            return ProactorListenerGroup.Bind(backend, dispatchers, (IPEndPoint)endpoint, options, logger);
        }

        Socket socket = BindSocket(endpoint, options, reusePort: false);
        var listener = new ProactorConnectionListener(backend, backend.NextDispatcher(), socket, options, logger);
        listener.Start();
        return listener;
    }

    /// <summary>A member of <paramref name="group"/>: accepts from its own listen socket on <paramref name="dispatcher"/>.</summary>
    internal static ProactorConnectionListener CreateMember(
        ProactorBackend backend, ProactorDispatcher dispatcher, Socket listenSocket, ProactorTransportOptions options, ILogger logger, ProactorListenerGroup group)
        => new(backend, dispatcher, listenSocket, options, logger, group);

    /// <summary>A listen socket bound to <paramref name="endpoint"/> and listening; with SO_REUSEPORT first when asked.</summary>
    internal static Socket BindSocket(EndPoint endpoint, ProactorTransportOptions options, bool reusePort)
    {
        Socket socket;
        try
        {
            socket = reusePort ? ProactorListenerGroup.CreateReusePortSocket((IPEndPoint)endpoint) : SocketTransportOptions.CreateDefaultBoundListenSocket(endpoint);
        }
        catch (SocketException ex) when (ex.SocketErrorCode == SocketError.AddressAlreadyInUse)
        {
            throw new AddressInUseException(ex.Message, ex);
        }

        try
        {
            socket.Listen(options.Backlog);
        }
        catch
        {
            socket.Dispose();
            throw;
        }

        return socket;
    }

    internal void Start()
        => _acceptDispatcher.Schedule(static state => ((ProactorConnectionListener)state!).StartOnDispatcher(), this);

    private void StartOnDispatcher()
    {
        _acceptDispatcher.Register(this);
        _registeredOn = _acceptDispatcher;
        if (_unbinding)
        {
            // Moved here while an unbind was under way (its work item was for the dispatcher that failed).
            StopAccepting();
            return;
        }

        ArmAccept();
    }

    private void ArmAccept()
    {
        if (_unbinding || AcceptInFlight)
        {
            return;
        }

        _acceptDispatcher.SubmitAccept(this);
    }

    /// <summary>
    /// An accept completed. <paramref name="more"/>: a multishot accept goes on without a new submission.
    /// <paramref name="acceptedSocket"/> is cleared once a connection owns it; any other socket is closed here
    /// (or by the dispatcher if this throws first).
    /// </summary>
    public void OnAcceptCompleted(IoResult result, ref SafeHandle? acceptedSocket, bool more)
    {
        if (result.IsSuccess && acceptedSocket is not null)
        {
            _retryDelayMs = 0;
            if (_unbinding)
            {
                acceptedSocket.Dispose();
            }
            else
            {
                // Kestrel reads both endpoints of every connection at its start, so they are looked up here
                // once. A peer that reset while it waited in the backlog still has its address (the backend asks
                // as accept does), so the connection goes to Kestrel, which sees the reset, as with its socket
                // transport; one whose addresses cannot be read at all is dropped and the next one accepted.
                if (!_acceptDispatcher.TryGetEndPoint(acceptedSocket, local: false, out EndPoint? remote) ||
                    !_acceptDispatcher.TryGetEndPoint(acceptedSocket, local: true, out EndPoint? local))
                {
                    acceptedSocket.Dispose();
                }
                else
                {
                    // A group's member keeps each connection on the dispatcher that accepted it: no hop to start it.
                    ProactorDispatcher target = _group is null ? _backend.NextDispatcher() : _acceptDispatcher;
                    target.ConfigureAcceptedSocket(acceptedSocket, _isTcp && _options.NoDelay);
                    var connection = new ProactorConnection(target, acceptedSocket, _isTcp, local, remote, _logger);
                    acceptedSocket = null;
                    AcceptedConnections++;
                    if (_accepted.Writer.TryWrite(connection))
                    {
                        // Start receiving now rather than when Kestrel's accept loop, a thread hop away, takes it:
                        // the request is usually in the pipe by then. On this dispatcher that costs no wake-up.
                        connection.Start();
                    }
                    else
                    {
                        // The accept queue is closed: the connection owns the socket (and a pool lease), so it is
                        // closed the way every connection is, through its dispatcher.
                        connection.Abort(new ConnectionAbortedException("The listener stopped before the connection was accepted."));
                        _ = connection.DisposeAsync().AsTask();
                    }
                }
            }
        }
        else if (!result.IsSuccess)
        {
            switch (result.Error)
            {
                case SocketError.OperationAborted when _unbinding:
                    break;
                case SocketError.ConnectionAborted or SocketError.ConnectionReset:
                    // The connection was reset while it waited in the backlog: not an error, accept the next.
                    break;
                case SocketError.TooManyOpenSockets or SocketError.NoBufferSpaceAvailable when !_unbinding:
                    // Out of descriptors or memory: back off instead of spinning, and retry. Accepting resumes
                    // by itself once connections close.
                    _retryDelayMs = Math.Clamp(_retryDelayMs * 2, 10, MaxAcceptRetryDelayMs);
                    ProactorLog.AcceptRetry(_logger, DisplayName, result.ToString(), _retryDelayMs);
                    if (!more)
                    {
                        ScheduleRetry();
                    }

                    return;
                default:
                    if (!_unbinding)
                    {
                        ProactorLog.AcceptRetry(_logger, DisplayName, result.ToString(), 10);
                        if (!more)
                        {
                            _retryDelayMs = 10;
                            ScheduleRetry();
                        }

                        return;
                    }

                    break;
            }
        }

        if (!more)
        {
            if (_unbinding)
            {
                StopAccepting();
            }
            else
            {
                ArmAccept();
            }
        }
    }

    private void ScheduleRetry()
    {
        _retryTimer?.Dispose();
        _retryTimer = new Timer(static state =>
        {
            var listener = (ProactorConnectionListener)state!;
            // Through the move guard: the listener may have moved to a dispatcher where it is not registered yet.
            listener._acceptDispatcher.Schedule(static s => ((ProactorConnectionListener)s!).ResumeAfterMove(), listener);
        }, this, _retryDelayMs, Timeout.Infinite);
    }

    public ValueTask<ConnectionContext?> AcceptAsync(CancellationToken cancellationToken = default)
        => AcceptQueue.NextAsync(_accepted.Reader, _isUnbinding ??= () => _unbinding, cancellationToken);

    public async ValueTask UnbindAsync(CancellationToken cancellationToken = default)
    {
        _unbinding = true;
        // Accepting ends once both the accept (ECANCELED) and the cancel sent here have completed (see AdvanceUnbind).
        // Through the move guard: a listener that just moved is published on its new dispatcher before its start
        // is queued there, and an unbind queued in between must leave the stop to that start.
        _acceptDispatcher.Schedule(static state => ((ProactorConnectionListener)state!).ResumeAfterMove(), this);
        try
        {
            await _acceptStopped.Task.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            // The host gave up waiting (a stop with an expired token): the unbind still completes on the
            // dispatcher, and AcceptAsync already returns null.
        }
    }

    /// <summary>Runs on the accept dispatcher once no accept is in flight.</summary>
    private void StopAccepting()
    {
        // The unbind's cancel may still be in flight (its accept completed just before it), or the accept (the
        // cancel completed first): the listener leaves the operation table only after the last of them.
        if (_acceptStopHandled || AcceptInFlight)
        {
            return;
        }

        _acceptStopHandled = true;
        _retryTimer?.Dispose();
        CloseListenSocket();
        _acceptDispatcher.Unregister(this);
        EndAccepting(null);
        _acceptStopped.TrySetResult();
    }

    public async ValueTask DisposeAsync()
    {
        await UnbindAsync().ConfigureAwait(false);
        await AcceptQueue.CloseNeverAcceptedAsync(_accepted.Reader).ConfigureAwait(false);
    }

    /// <summary>
    /// A dispatcher ended under this listener: the one that accepted failed (or stopped with this listener still
    /// bound), or a work item of this listener came to one that had ended. The listen socket was only in that
    /// dispatcher's kernel queue, not closed with it, so it moves to a surviving dispatcher where it can (see the
    /// type's notes). Runs on the ended dispatcher's thread or the thread of a late work item.
    /// </summary>
    void IOperationOwner.OnDispatcherFailed(Exception error, bool operationsMayBeLive)
    {
        lock (_moveGate)
        {
            if (_acceptStopped.Task.IsCompleted)
            {
                return;
            }

            ProactorDispatcher current = _acceptDispatcher;
            if (!current.HasEnded)
            {
                // A late work item (an unbind, a retry) for a dispatcher this listener has already left: redo its
                // step on the one it is on now.
                current.Schedule(static state => ((ProactorConnectionListener)state!).ResumeAfterMove(), this);
                return;
            }

            _retryTimer?.Dispose();
            _retryTimer = null;
            ProactorDispatcher next = _backend.NextDispatcher();
            bool canMove = current.HasFailed && current.QueueClosed && !_unbinding && !next.HasEnded && !next.HasFailed && !next.StopRequested && next.CanTakeOverListener;
            // A queue whose teardown failed may still hold this listener's accept: another must not accept too.
            if (!canMove)
            {
                if (current.HasFailed && !_unbinding)
                {
                    ProactorLog.ListenerClosedAfterFailure(_logger, DisplayName);
                }

                // Stopping (an unbind or the transport's own stop) or nowhere to go: close the port. Kestrel's next
                // accept sees the failure, or the end of accepting when this was a stop.
                CloseListenSocket();
                EndAccepting(current.HasFailed && !_unbinding
                    ? new IOException($"The dispatcher that accepted on {DisplayName} stopped on an unrecoverable error.", error)
                    : null);

                _acceptStopped.TrySetResult();
                return;
            }

            // The accept that was in flight ended with the kernel queue, as did any backend state for it (the ended
            // dispatcher's teardown keeps what the kernel may still touch).
            BackendState = null;
            _retryDelayMs = 0;
            _acceptDispatcher = next;
            ProactorLog.ListenerMoved(_logger, DisplayName, next.Id);
            next.Schedule(static state => ((ProactorConnectionListener)state!).StartOnDispatcher(), this);
        }
    }

    /// <summary>
    /// Closes the listen socket. Shut down first: a kernel queue that could not be closed may still hold an accept on
    /// it, which keeps the socket listening after its descriptor is gone (with SO_REUSEPORT, still taking its share of
    /// the port's connections); a shutdown stops it listening and resets its backlog whoever holds it.
    /// </summary>
    private void CloseListenSocket()
    {
        try
        {
            _listenSocket.Shutdown(SocketShutdown.Both);
        }
        catch (SocketException)
        {
            // Not listening (never was, or already shut): the close is all there is to do.
        }
        catch (ObjectDisposedException)
        {
        }

        _listenSocket.Dispose();
    }

    /// <summary>Accepting ended here: the queue Kestrel reads ends with it, or, in a group, once every member's has.</summary>
    private void EndAccepting(Exception? error)
    {
        if (Interlocked.Exchange(ref _acceptingEnded, 1) != 0)
        {
            // Once per listener: a group counts its members' ends.
            return;
        }

        if (_group is null)
        {
            _accepted.Writer.TryComplete(error);
        }
        else
        {
            _group.OnMemberEnded(error);
        }
    }

    /// <summary>
    /// On the accept dispatcher: the unbind's or a retry's step (or what such a work item lost on a dispatcher this
    /// listener has left would have done). Does nothing until the listener is registered there.
    /// </summary>
    private void ResumeAfterMove()
    {
        if (_acceptStopHandled || !ReferenceEquals(_registeredOn, _acceptDispatcher))
        {
            // Not yet registered here: StartOnDispatcher, queued before this, arms or stops as needed.
            return;
        }

        if (_unbinding)
        {
            if (AcceptInFlight)
            {
                _acceptDispatcher.SubmitCancel(this, OperationKind.Accept);
            }
            else
            {
                StopAccepting();
            }
        }
        else
        {
            ArmAccept();
        }
    }

    void IOperationOwner.OnHandlerFault(OperationKind kind, bool operationEnded, Exception exception)
    {
        TestFaultHook?.Invoke(this);
        // Whether the accept ended comes from the operation table (AcceptInFlight), not from the handler, which
        // may have thrown before it saw that this was the accept's last completion.
        if (_unbinding)
        {
            StopAccepting();
        }
        else if (!AcceptInFlight)
        {
            // A multishot accept that goes on must not get a twin (one cancel at unbind could not end both).
            _retryDelayMs = 10;
            ScheduleRetry();
        }
    }

    /// <summary>
    /// Runs after every completion of this listener, whether or not its handler threw. Once unbinding, accepting
    /// stops when the last of the accept and the unbind's cancel has completed, in whichever order they came.
    /// </summary>
    public void AdvanceUnbind()
    {
        if (_unbinding)
        {
            StopAccepting();
        }
    }
}
