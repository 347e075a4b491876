using System.Runtime.InteropServices;

namespace KestrelProactor.Interop.Linux;

/// <summary>The libc entry points the io_uring backend needs besides io_uring itself.</summary>
internal static unsafe partial class Interop
{
    internal static partial class Sys
    {
        private const string Libc = "libc";

        public const int PROT_READ = 0x1;
        public const int PROT_WRITE = 0x2;
        public const int MAP_SHARED = 0x01;
        public const int MAP_PRIVATE = 0x02;
        public const int MAP_ANONYMOUS = 0x20;
        public const int MAP_POPULATE = 0x8000;

        public const int EFD_CLOEXEC = 0x80000;
        public const int EFD_NONBLOCK = 0x800;

        public const int SOL_SOCKET = 1;
        public const int SO_LINGER = 13;
        public const int IPPROTO_TCP = 6;
        public const int TCP_NODELAY = 1;
        public const int MSG_NOSIGNAL = 0x4000;
        public const int SHUT_WR = 1;
        public const int SOCK_CLOEXEC = 0x80000;
        public const int SOCK_NONBLOCK = 0x800;

        public const int F_GETFL = 3;
        public const int O_NONBLOCK = 0x800;
        public const int SO_SNDBUF = 7;

        // poll(2) events, as IORING_OP_POLL_ADD takes them.
        public const uint POLLIN = 0x1;

        public const int AF_UNIX = 1;
        public const int AF_INET = 2;
        public const int AF_INET6 = 10;

        [StructLayout(LayoutKind.Sequential)]
        public struct linger
        {
            public int l_onoff;
            public int l_linger;
        }

        [StructLayout(LayoutKind.Sequential)]
        public struct iovec
        {
            public void* iov_base;
            public nuint iov_len;
        }

        [StructLayout(LayoutKind.Sequential)]
        public struct msghdr
        {
            public void* msg_name;
            public uint msg_namelen;
            public iovec* msg_iov;
            public nuint msg_iovlen;
            public void* msg_control;
            public nuint msg_controllen;
            public int msg_flags;
        }

        [StructLayout(LayoutKind.Sequential)]
        public struct utsname
        {
            public fixed byte sysname[65];
            public fixed byte nodename[65];
            public fixed byte release[65];
            public fixed byte version[65];
            public fixed byte machine[65];
            public fixed byte domainname[65];
        }

        // The io_uring calls pass six integer-sized arguments, the way the kernel's syscall ABI takes them.
        [LibraryImport(Libc, SetLastError = true)]
        public static partial long syscall(long number, nint a1, nint a2, nint a3, nint a4, nint a5, nint a6);

        [LibraryImport(Libc, SetLastError = true)]
        public static partial void* mmap(void* addr, nuint length, int prot, int flags, int fd, long offset);

        [LibraryImport(Libc, SetLastError = true)]
        public static partial int munmap(void* addr, nuint length);

        [LibraryImport(Libc, SetLastError = true)]
        public static partial int close(int fd);

        [LibraryImport(Libc, SetLastError = true)]
        public static partial int eventfd(uint initval, int flags);

        [LibraryImport(Libc, SetLastError = true)]
        public static partial nint write(int fd, void* buf, nuint count);

        [LibraryImport(Libc, SetLastError = true)]
        public static partial int fcntl(int fd, int cmd);

        [LibraryImport(Libc, SetLastError = true)]
        public static partial int setsockopt(int fd, int level, int optname, void* optval, uint optlen);

        [LibraryImport(Libc, SetLastError = true)]
        public static partial int getsockopt(int fd, int level, int optname, void* optval, uint* optlen);

        [LibraryImport(Libc, SetLastError = true)]
        public static partial int getsockname(int fd, byte* addr, uint* addrlen);

        [LibraryImport(Libc, SetLastError = true)]
        public static partial int getpeername(int fd, byte* addr, uint* addrlen);

        [LibraryImport(Libc, SetLastError = true)]
        public static partial int uname(utsname* buf);

        public static readonly void* MAP_FAILED = (void*)-1;
    }
}
