using System.Runtime.InteropServices;

namespace KestrelProactor;

/// <summary>
/// Present on every connection the proactor transport serves: which backend and dispatcher run it, and its
/// socket descriptor. The connection also carries <c>IConnectionSocketFeature</c>, a
/// <see cref="System.Net.Sockets.Socket"/> over the same descriptor for setting options and reading the peer.
/// </summary>
public interface IProactorConnectionFeature
{
    /// <summary>The native backend: <c>"io_uring"</c> or <c>"iocp"</c>.</summary>
    string Backend { get; }

    /// <summary>The index of the dispatcher (ring or completion port) that runs this connection.</summary>
    int DispatcherId { get; }

    /// <summary>
    /// The connection's socket descriptor, under a handle of its own, made on first use. The transport owns the
    /// descriptor and closes it, but not while the application holds a reference to this handle (as a P/Invoke that
    /// marshals it does for the call): the close waits for the reference to be released. Once the connection is
    /// closed the handle is closed too, so a later use fails instead of reaching another file. Use it for socket
    /// options and queries only: reading or writing on the descriptor would interleave with the transport's own I/O.
    /// Disposing it closes nothing.
    /// </summary>
    SafeHandle SocketHandle { get; }
}
