using System.Net.Sockets;
using System.Runtime.InteropServices;

namespace KestrelProactor.Internal;

/// <summary>
/// The application's views of the connection's descriptor: <see cref="IProactorConnectionFeature.SocketHandle"/> and
/// the <see cref="Socket"/> of <c>IConnectionSocketFeature</c>. Each is made on first use and owns nothing: the
/// transport alone closes the descriptor. They are reference-counted handles all the same, so the close waits for a
/// call the application has in progress on one (a P/Invoke that marshals the handle, a <c>SetSocketOption</c>), and a
/// call after the close fails with <see cref="ObjectDisposedException"/> instead of reaching whatever descriptor the
/// number belongs to by then.
/// </summary>
internal sealed partial class ProactorConnection
{
    private readonly Lock _viewGate = new();
    private Socket? _applicationSocket;
    private ApplicationSocketHandle? _applicationHandle;
    private bool _viewsRetired;

    // Views made and not yet released: raised where a view is made, lowered where its last reference goes.
    private int _viewReleasesPending;
    private bool _viewRetirementStarted;

    /// <summary>True while the close waits for the application to release a view of the descriptor (read racily, for tests).</summary>
    internal bool AwaitsApplicationViews => Volatile.Read(ref _viewReleasesPending) != 0 && _viewRetirementStarted;

    private SafeHandle GetApplicationHandle()
    {
        lock (_viewGate)
        {
            if (_applicationHandle is null)
            {
                if (_viewsRetired)
                {
                    // The descriptor is closed, or about to be: a handle that is already closed says so.
                    _applicationHandle = ApplicationSocketHandle.CreateClosed();
                }
                else
                {
                    Interlocked.Increment(ref _viewReleasesPending);
                    _applicationHandle = new ApplicationSocketHandle(Socket.DangerousGetHandle(), this);
                }
            }

            return _applicationHandle;
        }
    }

    private Socket GetApplicationSocket()
    {
        lock (_viewGate)
        {
            if (_applicationSocket is null)
            {
                // Made after the close there is nothing to make it over: the number may belong to another file by now.
                ObjectDisposedException.ThrowIf(_viewsRetired, typeof(Socket));
                Interlocked.Increment(ref _viewReleasesPending);
                _applicationSocket = new Socket(new SafeSocketHandle(Socket.DangerousGetHandle(), ownsHandle: false));
            }

            return _applicationSocket;
        }
    }

    /// <summary>
    /// Dispatcher thread, once nothing of the connection is in flight: disposes the application's views, and returns
    /// true once each has released its last reference, so the descriptor may be closed. Until then the close waits;
    /// a view's release brings it back here.
    /// </summary>
    private bool TryRetireApplicationViews()
    {
        if (!_viewRetirementStarted)
        {
            _viewRetirementStarted = true;
            (ApplicationSocketHandle? handle, Socket? socket) = MarkViewsRetired();

            // Its release runs now, or when the application's call in progress returns its reference.
            handle?.Dispose();
            if (socket is not null)
            {
                // Disposing a Socket waits (spinning) for a call in progress on it: not on this thread.
                ThreadPool.UnsafeQueueUserWorkItem(
                    static connection =>
                    {
                        try
                        {
                            connection._applicationSocket!.Dispose();
                        }
                        catch (Exception ex)
                        {
                            // Not expected (a Socket's Dispose does not throw); a thread-pool item must not throw either.
                            ProactorLog.ConnectionError(connection._logger, connection.ConnectionId, "socket view dispose", ex.Message, ex);
                        }
                        finally
                        {
                            connection.OnApplicationViewReleased();
                        }
                    },
                    this,
                    preferLocal: false);
            }
        }

        return Volatile.Read(ref _viewReleasesPending) == 0;
    }

    /// <summary>The dispatcher failed: the views go at once (any thread), as the descriptor does right after.</summary>
    private void RetireApplicationViewsNow()
    {
        (ApplicationSocketHandle? handle, Socket? socket) = MarkViewsRetired();
        handle?.Dispose();
        socket?.Dispose();
    }

    private (ApplicationSocketHandle? Handle, Socket? Socket) MarkViewsRetired()
    {
        lock (_viewGate)
        {
            _viewsRetired = true;
            return (_applicationHandle, _applicationSocket);
        }
    }

    /// <summary>A view released its last reference (any thread): the close may go on.</summary>
    private void OnApplicationViewReleased()
    {
        if (Interlocked.Decrement(ref _viewReleasesPending) == 0)
        {
            Dispatcher.Schedule(static state => ((ProactorConnection)state!).AdvanceClose(), this);
        }
    }

    /// <summary>
    /// <see cref="IProactorConnectionFeature.SocketHandle"/>: the descriptor's number under a handle of its own. Its
    /// release closes nothing; it tells the connection that the application holds no reference any more.
    /// </summary>
    private sealed class ApplicationSocketHandle : SafeHandle
    {
        private readonly ProactorConnection? _owner;

        public ApplicationSocketHandle(nint descriptor, ProactorConnection? owner)
            : base(invalidHandleValue: -1, ownsHandle: true)
        {
            _owner = owner;
            SetHandle(descriptor);
        }

        public override bool IsInvalid => handle == -1;

        public static ApplicationSocketHandle CreateClosed()
        {
            var closed = new ApplicationSocketHandle(-1, owner: null);
            closed.SetHandleAsInvalid();
            return closed;
        }

        protected override bool ReleaseHandle()
        {
            _owner?.OnApplicationViewReleased();
            return true;
        }
    }
}
