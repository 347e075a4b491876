using System.Runtime.InteropServices;
using static KestrelProactor.Interop.Windows.Interop;

namespace KestrelProactor.Iocp;

/// <summary>
/// Owns a socket the IOCP backend created (an AcceptEx target that became a connection). Releasing it is the
/// connection's close: <c>closesocket</c>, with the linger set by an abort (RST) or the default (FIN).
/// </summary>
internal sealed class IocpSocketHandle : SafeHandle
{
    public IocpSocketHandle() : base(invalidHandleValue: Winsock.INVALID_SOCKET, ownsHandle: true)
    {
    }

    public IocpSocketHandle(nint socket) : this()
    {
        SetHandle(socket);
    }

    public override bool IsInvalid => handle == Winsock.INVALID_SOCKET || handle == 0;

    /// <summary>
    /// The port skips this socket's operations that succeed at once (set when it is bound to its dispatcher's port).
    /// When false, such an operation still queues a packet, and only that packet completes it.
    /// </summary>
    public bool SkipsPortOnSuccess { get; set; }

    protected override bool ReleaseHandle() => Winsock.closesocket(handle) == 0;
}
