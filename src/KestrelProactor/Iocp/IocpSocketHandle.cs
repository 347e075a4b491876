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

    protected override bool ReleaseHandle() => Winsock.closesocket(handle) == 0;
}
