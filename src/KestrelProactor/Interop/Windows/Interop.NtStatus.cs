using System.Net.Sockets;

namespace KestrelProactor.Interop.Windows;

/// <summary>
/// The NTSTATUS an overlapped operation leaves in <c>OVERLAPPED.Internal</c>, mapped to the <see cref="SocketError"/>
/// the shared connection code understands (the mapping <c>WSAGetOverlappedResult</c> would make, for the statuses
/// a socket produces).
/// </summary>
internal static partial class Interop
{
    internal static class NtStatus
    {
        public const uint STATUS_SUCCESS = 0x00000000;
        public const uint STATUS_PENDING = 0x00000103;
        public const uint STATUS_HANDLES_CLOSED = 0x8000000A;
        public const uint STATUS_ACCESS_DENIED = 0xC0000022;
        public const uint STATUS_INVALID_HANDLE = 0xC0000008;
        public const uint STATUS_INSUFFICIENT_RESOURCES = 0xC000009A;
        public const uint STATUS_IO_TIMEOUT = 0xC00000B5;
        public const uint STATUS_CANCELLED = 0xC0000120;
        public const uint STATUS_LOCAL_DISCONNECT = 0xC000013B;
        public const uint STATUS_REMOTE_DISCONNECT = 0xC000013C;
        public const uint STATUS_CONNECTION_RESET = 0xC000020D;
        public const uint STATUS_CONNECTION_REFUSED = 0xC0000236;
        public const uint STATUS_CONNECTION_ABORTED = 0xC0000241;
        public const uint STATUS_NETWORK_UNREACHABLE = 0xC000023C;
        public const uint STATUS_HOST_UNREACHABLE = 0xC000023D;

        public static SocketError ToSocketError(uint status) => status switch
        {
            STATUS_SUCCESS => SocketError.Success,
            STATUS_CANCELLED => SocketError.OperationAborted,
            STATUS_CONNECTION_RESET or STATUS_REMOTE_DISCONNECT => SocketError.ConnectionReset,
            STATUS_CONNECTION_ABORTED or STATUS_LOCAL_DISCONNECT => SocketError.ConnectionAborted,
            // Wine completes a receive pending on a socket being closed with this warning status: the end of the
            // connection, not a success.
            STATUS_HANDLES_CLOSED => SocketError.ConnectionAborted,
            STATUS_INVALID_HANDLE => SocketError.NotSocket,
            STATUS_INSUFFICIENT_RESOURCES => SocketError.NoBufferSpaceAvailable,
            STATUS_IO_TIMEOUT => SocketError.TimedOut,
            STATUS_CONNECTION_REFUSED => SocketError.ConnectionRefused,
            STATUS_NETWORK_UNREACHABLE => SocketError.NetworkUnreachable,
            STATUS_HOST_UNREACHABLE => SocketError.HostUnreachable,
            STATUS_ACCESS_DENIED => SocketError.AccessDenied,
            _ => SocketError.SocketError,
        };
    }
}
