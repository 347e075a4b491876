using System.Runtime.InteropServices;

namespace KestrelProactor.Perf.Ceiling;

/// <summary>The few libc calls the responder needs: a listening socket, epoll, and plain recv/send.</summary>
internal static unsafe class Native
{
    public const int AF_INET = 2;
    public const int SOCK_STREAM = 1;
    public const int SOCK_NONBLOCK = 0x800;
    public const int SOCK_CLOEXEC = 0x80000;
    public const int SOL_SOCKET = 1;
    public const int SO_REUSEADDR = 2;
    public const int IPPROTO_TCP = 6;
    public const int TCP_NODELAY = 1;
    public const int EPOLL_CLOEXEC = 0x80000;
    public const int EPOLL_CTL_ADD = 1;
    public const int EPOLL_CTL_MOD = 3;
    public const uint EPOLLIN = 0x1;
    public const uint EPOLLOUT = 0x4;
    public const uint EPOLLERR = 0x8;
    public const uint EPOLLHUP = 0x10;
    public const int MSG_NOSIGNAL = 0x4000;
    public const int EINTR = 4;
    public const int EAGAIN = 11;

    // struct epoll_event is packed on x86-64 (12 bytes, data at offset 4) and naturally aligned elsewhere (16, at 8).
    public static readonly int EventSize = RuntimeInformation.ProcessArchitecture == Architecture.X64 ? 12 : 16;
    private static readonly int s_dataOffset = RuntimeInformation.ProcessArchitecture == Architecture.X64 ? 4 : 8;

    [DllImport("libc", SetLastError = true)] public static extern int socket(int domain, int type, int protocol);
    [DllImport("libc", SetLastError = true)] public static extern int setsockopt(int fd, int level, int name, int* value, int length);
    [DllImport("libc", SetLastError = true)] public static extern int bind(int fd, byte* address, int length);
    [DllImport("libc", SetLastError = true)] public static extern int listen(int fd, int backlog);
    [DllImport("libc", SetLastError = true)] public static extern int accept4(int fd, byte* address, int* length, int flags);
    [DllImport("libc", SetLastError = true)] public static extern int epoll_create1(int flags);
    [DllImport("libc", SetLastError = true)] private static extern int epoll_ctl(int epfd, int op, int fd, byte* ev);
    [DllImport("libc", SetLastError = true)] public static extern int epoll_wait(int epfd, byte* events, int maxEvents, int timeoutMs);
    [DllImport("libc", SetLastError = true)] public static extern nint recv(int fd, byte* buffer, nint length, int flags);
    [DllImport("libc", SetLastError = true)] public static extern nint send(int fd, byte* buffer, nint length, int flags);
    [DllImport("libc", SetLastError = true)] public static extern int close(int fd);

    public static int Errno => Marshal.GetLastPInvokeError();

    public static int EpollControl(int epfd, int op, int fd, uint events)
    {
        byte* ev = stackalloc byte[16];
        new Span<byte>(ev, 16).Clear();
        *(uint*)ev = events;
        *(int*)(ev + s_dataOffset) = fd;
        return epoll_ctl(epfd, op, fd, ev);
    }

    public static uint EventFlags(byte* events, int index) => *(uint*)(events + (index * EventSize));

    public static int EventDescriptor(byte* events, int index) => *(int*)(events + (index * EventSize) + s_dataOffset);

    /// <summary>A non-blocking TCP listener on 127.0.0.1:<paramref name="port"/>.</summary>
    public static int ListenLoopback(int port)
    {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        Check(fd, "socket");
        int one = 1;
        Check(setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(int)), "setsockopt(SO_REUSEADDR)");
        // struct sockaddr_in: family (host order), port (network order), address (network order), 8 bytes of zero.
        byte* address = stackalloc byte[16];
        new Span<byte>(address, 16).Clear();
        *(ushort*)address = AF_INET;
        address[2] = (byte)(port >> 8);
        address[3] = (byte)port;
        address[4] = 127;
        address[7] = 1;
        Check(bind(fd, address, 16), $"bind(127.0.0.1:{port})");
        Check(listen(fd, 4096), "listen");
        return fd;
    }

    public static void Check(long result, string what)
    {
        if (result < 0)
        {
            throw new InvalidOperationException($"{what} failed: errno {Errno}");
        }
    }
}
