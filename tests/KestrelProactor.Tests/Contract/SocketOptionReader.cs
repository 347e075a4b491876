using System.Runtime.InteropServices;

namespace KestrelProactor.Tests.Contract;

/// <summary>
/// Reads socket options straight from a descriptor the transport owns, without wrapping it in a
/// <see cref="System.Net.Sockets.Socket"/> that could change its mode or close it.
/// </summary>
internal static partial class SocketOptionReader
{
    // Linux values from <netinet/in.h> and <netinet/tcp.h>; Winsock uses the same two.
    private const int IpProtoTcp = 6;
    private const int TcpNoDelay = 1;

    public static bool GetTcpNoDelay(SafeHandle socket)
    {
        bool addedRef = false;
        try
        {
            socket.DangerousAddRef(ref addedRef);
            int value = 0;
            int length = sizeof(int);
            int result = OperatingSystem.IsWindows()
                ? WinsockGetSockOpt(socket.DangerousGetHandle(), IpProtoTcp, TcpNoDelay, ref value, ref length)
                : GetSockOpt((int)socket.DangerousGetHandle(), IpProtoTcp, TcpNoDelay, ref value, ref length);
            if (result != 0)
            {
                throw new InvalidOperationException($"getsockopt(TCP_NODELAY) failed: errno {Marshal.GetLastPInvokeError()}.");
            }

            return value != 0;
        }
        finally
        {
            if (addedRef)
            {
                socket.DangerousRelease();
            }
        }
    }

    /// <summary>Duplicates a descriptor, so the copy can be handed to an owner that will close it.</summary>
    public static nint Duplicate(nint fd)
    {
        int copy = Dup((int)fd);
        if (copy < 0)
        {
            throw new InvalidOperationException($"dup failed: errno {Marshal.GetLastPInvokeError()}.");
        }

        return copy;
    }

    [LibraryImport("libc", EntryPoint = "getsockopt", SetLastError = true)]
    private static partial int GetSockOpt(int socket, int level, int optionName, ref int optionValue, ref int optionLength);

    [LibraryImport("ws2_32.dll", EntryPoint = "getsockopt", SetLastError = true)]
    private static partial int WinsockGetSockOpt(nint socket, int level, int optionName, ref int optionValue, ref int optionLength);

    [LibraryImport("libc", EntryPoint = "dup", SetLastError = true)]
    private static partial int Dup(int fd);
}
