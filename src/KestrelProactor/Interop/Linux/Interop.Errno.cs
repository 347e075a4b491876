using System.Net.Sockets;

namespace KestrelProactor.Interop.Linux;

internal static unsafe partial class Interop
{
    /// <summary>The errno values the io_uring backend tells apart, their names, and their socket errors.</summary>
    internal static class Errno
    {
        public const int EPERM = 1;
        public const int ENOENT = 2;
        public const int EINTR = 4;
        public const int EIO = 5;
        public const int EBADF = 9;
        public const int EAGAIN = 11;
        public const int ENOMEM = 12;
        public const int EACCES = 13;
        public const int EFAULT = 14;
        public const int EBUSY = 16;
        public const int EINVAL = 22;
        public const int ENFILE = 23;
        public const int EMFILE = 24;
        public const int EPIPE = 32;
        public const int ENOSYS = 38;
        public const int EBADR = 53;
        public const int ENOTSOCK = 88;
        public const int ETIME = 62;
        public const int EOPNOTSUPP = 95;
        public const int EADDRINUSE = 98;
        public const int ENETDOWN = 100;
        public const int ECONNABORTED = 103;
        public const int ECONNRESET = 104;
        public const int ENOBUFS = 105;
        public const int ENOTCONN = 107;
        public const int ETIMEDOUT = 110;
        public const int ECONNREFUSED = 111;
        public const int EHOSTUNREACH = 113;
        public const int EALREADY = 114;
        public const int ECANCELED = 125;

        public static string Name(int errno) => errno switch
        {
            EPERM => "EPERM",
            ETIME => "ETIME",
            EBADR => "EBADR",
            ENOENT => "ENOENT",
            EINTR => "EINTR",
            EIO => "EIO",
            EBADF => "EBADF",
            EAGAIN => "EAGAIN",
            ENOMEM => "ENOMEM",
            EACCES => "EACCES",
            EFAULT => "EFAULT",
            EBUSY => "EBUSY",
            EINVAL => "EINVAL",
            ENFILE => "ENFILE",
            EMFILE => "EMFILE",
            EPIPE => "EPIPE",
            ENOSYS => "ENOSYS",
            ENOTSOCK => "ENOTSOCK",
            EOPNOTSUPP => "EOPNOTSUPP",
            EADDRINUSE => "EADDRINUSE",
            ENETDOWN => "ENETDOWN",
            ECONNABORTED => "ECONNABORTED",
            ECONNRESET => "ECONNRESET",
            ENOBUFS => "ENOBUFS",
            ENOTCONN => "ENOTCONN",
            ETIMEDOUT => "ETIMEDOUT",
            ECONNREFUSED => "ECONNREFUSED",
            EHOSTUNREACH => "EHOSTUNREACH",
            EALREADY => "EALREADY",
            ECANCELED => "ECANCELED",
            _ => "errno " + errno,
        };

        public static SocketError ToSocketError(int errno) => errno switch
        {
            ECONNRESET => SocketError.ConnectionReset,
            EPIPE => SocketError.Shutdown,
            ECONNABORTED => SocketError.ConnectionAborted,
            ECANCELED => SocketError.OperationAborted,
            ENOBUFS => SocketError.NoBufferSpaceAvailable,
            EMFILE or ENFILE => SocketError.TooManyOpenSockets,
            ENOTCONN => SocketError.NotConnected,
            ETIMEDOUT => SocketError.TimedOut,
            EADDRINUSE => SocketError.AddressAlreadyInUse,
            EAGAIN => SocketError.WouldBlock,
            EINTR => SocketError.Interrupted,
            EBADF or ENOTSOCK => SocketError.NotSocket,
            EINVAL => SocketError.InvalidArgument,
            EACCES or EPERM => SocketError.AccessDenied,
            ENETDOWN => SocketError.NetworkDown,
            EHOSTUNREACH => SocketError.HostUnreachable,
            ECONNREFUSED => SocketError.ConnectionRefused,
            _ => SocketError.SocketError,
        };
    }
}
