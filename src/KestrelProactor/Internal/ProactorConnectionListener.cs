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
/// </summary>
internal sealed class ProactorConnectionListener : IConnectionListener, IOperationOwner
{
    private const int MaxAcceptRetryDelayMs = 1000;

    private readonly ProactorBackend _backend;
    private readonly ProactorDispatcher _acceptDispatcher;
    private readonly Socket _listenSocket;
    private readonly ProactorTransportOptions _options;
    private readonly ILogger _logger;
    private readonly Channel<ProactorConnection> _accepted = Channel.CreateUnbounded<ProactorConnection>(
        new UnboundedChannelOptions { SingleReader = true, SingleWriter = true, AllowSynchronousContinuations = false });
    private readonly TaskCompletionSource _acceptStopped = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly bool _isTcp;
    private volatile bool _unbinding;
    private bool _acceptStopHandled;
    private int _retryDelayMs;
    private Timer? _retryTimer;

    private ProactorConnectionListener(ProactorBackend backend, Socket listenSocket, ProactorTransportOptions options, ILogger logger)
    {
        _backend = backend;
        _acceptDispatcher = backend.NextDispatcher();
        _listenSocket = listenSocket;
        _options = options;
        _logger = logger;
        EndPoint = listenSocket.LocalEndPoint!;
        _isTcp = listenSocket.ProtocolType == ProtocolType.Tcp || EndPoint is IPEndPoint;
    }

    public EndPoint EndPoint { get; }

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
        Socket socket;
        try
        {
            socket = SocketTransportOptions.CreateDefaultBoundListenSocket(endpoint);
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

        var listener = new ProactorConnectionListener(backend, socket, options, logger);
        listener._acceptDispatcher.Schedule(static state => ((ProactorConnectionListener)state!).StartOnDispatcher(), listener);
        return listener;
    }

    private void StartOnDispatcher()
    {
        _acceptDispatcher.Register(this);
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
                // once. A peer that is already gone (reset while it waited in the backlog) has no remote
                // address: that connection is dropped and the next one accepted, as the contract asks.
                if (!_acceptDispatcher.TryGetEndPoint(acceptedSocket, local: false, out EndPoint? remote) ||
                    !_acceptDispatcher.TryGetEndPoint(acceptedSocket, local: true, out EndPoint? local))
                {
                    acceptedSocket.Dispose();
                }
                else
                {
                    ProactorDispatcher target = _backend.NextDispatcher();
                    target.ConfigureAcceptedSocket(acceptedSocket, _isTcp && _options.NoDelay);
                    var connection = new ProactorConnection(target, acceptedSocket, _isTcp, local, remote, _logger);
                    acceptedSocket = null;
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
            listener._acceptDispatcher.Schedule(static s =>
            {
                var l = (ProactorConnectionListener)s!;
                if (l._unbinding)
                {
                    l.StopAccepting();
                }
                else
                {
                    l.ArmAccept();
                }
            }, listener);
        }, this, _retryDelayMs, Timeout.Infinite);
    }

    public async ValueTask<ConnectionContext?> AcceptAsync(CancellationToken cancellationToken = default)
    {
        while (!_unbinding && await _accepted.Reader.WaitToReadAsync(cancellationToken).ConfigureAwait(false))
        {
            if (_unbinding)
            {
                break;
            }

            if (_accepted.Reader.TryRead(out ProactorConnection? connection))
            {
                connection.Start();
                return connection;
            }
        }

        return null;
    }

    public async ValueTask UnbindAsync(CancellationToken cancellationToken = default)
    {
        _unbinding = true;
        _acceptDispatcher.Schedule(static state =>
        {
            var listener = (ProactorConnectionListener)state!;
            if (listener.AcceptInFlight)
            {
                // Accepting ends once both the accept (ECANCELED) and this cancel have completed; see AdvanceUnbind.
                listener._acceptDispatcher.SubmitCancel(listener, OperationKind.Accept);
            }
            else
            {
                listener.StopAccepting();
            }
        }, this);
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
        _listenSocket.Dispose();
        _acceptDispatcher.Unregister(this);
        _accepted.Writer.TryComplete();
        _acceptStopped.TrySetResult();
    }

    public async ValueTask DisposeAsync()
    {
        await UnbindAsync().ConfigureAwait(false);
        // Connections accepted but never handed to Kestrel: close them.
        while (_accepted.Reader.TryRead(out ProactorConnection? connection))
        {
            connection.Abort(new ConnectionAbortedException("The listener was disposed before the connection was accepted."));
            await connection.DisposeAsync().ConfigureAwait(false);
        }
    }

    /// <summary>
    /// The accept dispatcher died: no accept can run again on this endpoint. Kestrel's next accept sees the
    /// error (and logs it), and an unbind returns at once.
    /// </summary>
    void IOperationOwner.OnDispatcherFailed(Exception error, bool operationsMayBeLive)
    {
        if (_acceptStopped.Task.IsCompleted)
        {
            return;
        }

        _retryTimer?.Dispose();
        _listenSocket.Dispose();
        _accepted.Writer.TryComplete(new IOException($"The dispatcher that accepted on {DisplayName} stopped on an unrecoverable error.", error));
        _acceptStopped.TrySetResult();
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
