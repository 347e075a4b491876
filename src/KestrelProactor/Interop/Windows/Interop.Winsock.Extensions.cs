using System.Runtime.InteropServices;

namespace KestrelProactor.Interop.Windows;

/// <summary>
/// Winsock extension functions (<c>AcceptEx</c>, <c>GetAcceptExSockaddrs</c>): not exported by name, they are looked
/// up per provider with <c>WSAIoctl(SIO_GET_EXTENSION_FUNCTION_POINTER)</c> on a socket of that provider.
/// </summary>
internal static unsafe partial class Interop
{
    internal static partial class Winsock
    {
        public const uint SIO_GET_EXTENSION_FUNCTION_POINTER = 0xC8000006;

        /// <summary>The space AcceptEx needs per address: the largest sockaddr (sockaddr_in6, 28 bytes) plus 16.</summary>
        public const int AcceptExAddressLength = 28 + 16;

        public static readonly Guid WSAID_ACCEPTEX = new(0xb5367df1, 0xcbac, 0x11cf, 0x95, 0xca, 0x00, 0x80, 0x5f, 0x48, 0xa1, 0x92);
        public static readonly Guid WSAID_GETACCEPTEXSOCKADDRS = new(0xb5367df2, 0xcbac, 0x11cf, 0x95, 0xca, 0x00, 0x80, 0x5f, 0x48, 0xa1, 0x92);

        [LibraryImport(Library, SetLastError = true)]
        public static partial int WSAIoctl(
            nint socket,
            uint ioControlCode,
            void* inBuffer,
            uint inBufferLength,
            void* outBuffer,
            uint outBufferLength,
            uint* bytesReturned,
            Kernel32.OVERLAPPED* overlapped,
            nint completionRoutine);

        /// <summary>
        /// <c>BOOL AcceptEx(SOCKET listen, SOCKET accept, PVOID output, DWORD receiveLength, DWORD localLength,
        /// DWORD remoteLength, LPDWORD bytesReceived, LPOVERLAPPED overlapped)</c>.
        /// </summary>
        public static delegate* unmanaged<nint, nint, void*, uint, uint, uint, uint*, Kernel32.OVERLAPPED*, int> AcceptEx;

        /// <summary>
        /// <c>void GetAcceptExSockaddrs(PVOID output, DWORD receiveLength, DWORD localLength, DWORD remoteLength,
        /// sockaddr** local, int* localLength, sockaddr** remote, int* remoteLength)</c>.
        /// </summary>
        public static delegate* unmanaged<void*, uint, uint, uint, byte**, int*, byte**, int*, void> GetAcceptExSockaddrs;

        /// <summary>Loads both extension functions through <paramref name="socket"/>; false with the error when Winsock refuses.</summary>
        public static bool TryLoadExtensions(nint socket, out int error)
        {
            void* acceptEx = LoadExtension(socket, WSAID_ACCEPTEX, out error);
            if (acceptEx is null)
            {
                return false;
            }

            void* getSockaddrs = LoadExtension(socket, WSAID_GETACCEPTEXSOCKADDRS, out error);
            if (getSockaddrs is null)
            {
                return false;
            }

            AcceptEx = (delegate* unmanaged<nint, nint, void*, uint, uint, uint, uint*, Kernel32.OVERLAPPED*, int>)acceptEx;
            GetAcceptExSockaddrs = (delegate* unmanaged<void*, uint, uint, uint, byte**, int*, byte**, int*, void>)getSockaddrs;
            return true;
        }

        private static void* LoadExtension(nint socket, Guid id, out int error)
        {
            void* function = null;
            uint returned = 0;
            if (WSAIoctl(socket, SIO_GET_EXTENSION_FUNCTION_POINTER, &id, (uint)sizeof(Guid), &function, (uint)sizeof(void*), &returned, null, 0) != 0)
            {
                error = Marshal.GetLastPInvokeError();
                return null;
            }

            error = 0;
            return function;
        }
    }
}
