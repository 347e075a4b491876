using System.Runtime.InteropServices;

namespace KestrelProactor.Interop.Windows;

/// <summary>Winsock calls the IOCP backend makes itself (ws2_32). Errors come back through <c>GetLastError</c>.</summary>
internal static unsafe partial class Interop
{
    internal static partial class Winsock
    {
        private const string Library = "ws2_32.dll";

        public const nint INVALID_SOCKET = -1;
        public const int SOCKET_ERROR = -1;
        public const int WSA_IO_PENDING = 997;
        public const int WSAECONNABORTED = 10053;
        public const int WSAECONNRESET = 10054;
        public const int WSAENOTCONN = 10057;

        public const int AF_UNIX = 1;
        public const int AF_INET = 2;
        public const int AF_INET6 = 23;
        public const int SOCK_STREAM = 1;
        public const int IPPROTO_TCP = 6;

        public const uint WSA_FLAG_OVERLAPPED = 0x01;
        public const uint WSA_FLAG_NO_HANDLE_INHERIT = 0x80;

        public const int SOL_SOCKET = 0xFFFF;
        public const int SO_LINGER = 0x0080;
        public const int SO_UPDATE_ACCEPT_CONTEXT = 0x700B;
        public const int TCP_NODELAY = 0x0001;
        public const int SD_SEND = 1;

        /// <summary>16 bytes on x64 (a 4-byte length, padding, a pointer).</summary>
        [StructLayout(LayoutKind.Sequential)]
        public struct WSABUF
        {
            public uint len;
            public byte* buf;
        }

        /// <summary>4 bytes: Winsock's linger has 16-bit fields.</summary>
        [StructLayout(LayoutKind.Sequential)]
        public struct linger
        {
            public ushort l_onoff;
            public ushort l_linger;
        }

        [LibraryImport(Library, SetLastError = true)]
        public static partial nint WSASocketW(int addressFamily, int socketType, int protocol, void* protocolInfo, uint group, uint flags);

        [LibraryImport(Library, SetLastError = true)]
        public static partial int WSARecv(
            nint socket,
            WSABUF* buffers,
            uint bufferCount,
            uint* numberOfBytesRecvd,
            uint* flags,
            Kernel32.OVERLAPPED* overlapped,
            nint completionRoutine);

        [LibraryImport(Library, SetLastError = true)]
        public static partial int WSASend(
            nint socket,
            WSABUF* buffers,
            uint bufferCount,
            uint* numberOfBytesSent,
            uint flags,
            Kernel32.OVERLAPPED* overlapped,
            nint completionRoutine);

        [LibraryImport(Library, SetLastError = true)]
        public static partial int setsockopt(nint socket, int level, int optionName, void* optionValue, int optionLength);

        [LibraryImport(Library, SetLastError = true)]
        public static partial int getsockopt(nint socket, int level, int optionName, void* optionValue, int* optionLength);

        [LibraryImport(Library, SetLastError = true)]
        public static partial int shutdown(nint socket, int how);

        [LibraryImport(Library, SetLastError = true)]
        public static partial int closesocket(nint socket);

        [LibraryImport(Library, SetLastError = true)]
        public static partial int getsockname(nint socket, byte* address, int* addressLength);

        [LibraryImport(Library, SetLastError = true)]
        public static partial int getpeername(nint socket, byte* address, int* addressLength);
    }
}
