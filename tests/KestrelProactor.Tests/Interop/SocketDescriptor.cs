using System.Runtime.InteropServices;
using static KestrelProactor.Interop.Linux.Interop;

namespace KestrelProactor.Tests.Interop;

/// <summary>Reads and sets what a test needs on a descriptor the transport owns, through the transport's own interop.</summary>
internal static unsafe class SocketDescriptor
{
    /// <summary>SO_SNDBUF (the kernel doubles it, up to its limit); the descriptor stays the transport's.</summary>
    public static void SetSendBufferSize(SafeHandle socket, int bytes)
    {
        int result = Sys.setsockopt(FdOf(socket), Sys.SOL_SOCKET, Sys.SO_SNDBUF, &bytes, sizeof(int));
        Assert.True(result == 0, $"setsockopt(SO_SNDBUF) failed: errno {Marshal.GetLastPInvokeError()}");
    }

    /// <summary>Whether O_NONBLOCK is set on the descriptor's open file.</summary>
    public static bool IsNonBlocking(SafeHandle socket)
    {
        int flags = Sys.fcntl(FdOf(socket), Sys.F_GETFL);
        Assert.True(flags >= 0, $"fcntl(F_GETFL) failed: errno {Marshal.GetLastPInvokeError()}");
        return (flags & Sys.O_NONBLOCK) != 0;
    }

    private static int FdOf(SafeHandle socket)
    {
        Assert.False(socket.IsInvalid || socket.IsClosed, "the descriptor is already closed");
        return (int)socket.DangerousGetHandle();
    }
}
