using System.Net.Sockets;
using System.Reflection;
using static KestrelProactor.Interop.Linux.Interop;

namespace KestrelProactor.Tests.Interop;

/// <summary>
/// How the io_uring backend reads a negative CQE result: every errno it tells apart, given here by its Linux number
/// so that a wrong constant fails too, has its name for logs and the <see cref="SocketError"/> the shared code
/// branches on.
/// </summary>
public class ErrnoTests
{
    /// <summary>Errnos with a socket error of their own, grouped by the code that reads them.</summary>
    public static TheoryData<int, string, SocketError> Mapped => new()
    {
        // A receive or send ending: a reset becomes Kestrel's ConnectionResetException; a cancelled operation
        // is no error (a receive re-arms, a send ends without logging).
        { 104, "ECONNRESET", SocketError.ConnectionReset },
        { 125, "ECANCELED", SocketError.OperationAborted },
        { 32, "EPIPE", SocketError.Shutdown },
        { 107, "ENOTCONN", SocketError.NotConnected },
        { 110, "ETIMEDOUT", SocketError.TimedOut },
        // An accept: a connection reset in the backlog is skipped; out of descriptors or memory backs off.
        { 103, "ECONNABORTED", SocketError.ConnectionAborted },
        { 24, "EMFILE", SocketError.TooManyOpenSockets },
        { 23, "ENFILE", SocketError.TooManyOpenSockets },
        { 105, "ENOBUFS", SocketError.NoBufferSpaceAvailable },
        // The rest only have to keep their meaning in logs and in the SocketException an application sees.
        { 98, "EADDRINUSE", SocketError.AddressAlreadyInUse },
        { 11, "EAGAIN", SocketError.WouldBlock },
        { 4, "EINTR", SocketError.Interrupted },
        { 9, "EBADF", SocketError.NotSocket },
        { 88, "ENOTSOCK", SocketError.NotSocket },
        { 22, "EINVAL", SocketError.InvalidArgument },
        { 13, "EACCES", SocketError.AccessDenied },
        { 1, "EPERM", SocketError.AccessDenied },
        { 100, "ENETDOWN", SocketError.NetworkDown },
        { 113, "EHOSTUNREACH", SocketError.HostUnreachable },
        { 111, "ECONNREFUSED", SocketError.ConnectionRefused },
    };

    /// <summary>
    /// Errnos named in logs (ring setup, mmap, probe, close) that no socket operation reports as its own error; ETIME is a
    /// bounded wait of io_uring_enter running out, EBADR its report of a dropped completion.
    /// </summary>
    public static TheoryData<int, string> NamedOnly => new()
    {
        { 2, "ENOENT" },
        { 5, "EIO" }, // a close's error (the fault runs inject it); the descriptor is gone all the same
        { 12, "ENOMEM" },
        { 14, "EFAULT" },
        { 16, "EBUSY" },
        { 38, "ENOSYS" },
        { 53, "EBADR" },
        { 62, "ETIME" },
        { 95, "EOPNOTSUPP" },
        { 114, "EALREADY" },
    };

    [Theory]
    [MemberData(nameof(Mapped))]
    public void ToSocketError_ErrnoWithASocketMeaning_MapsToThatSocketErrorAndIsNamed(int errno, string name, SocketError expected)
    {
        Assert.Equal(expected, Errno.ToSocketError(errno));
        Assert.Equal(name, Errno.Name(errno));
    }

    [Theory]
    [MemberData(nameof(NamedOnly))]
    public void ToSocketError_ErrnoWithoutASocketMeaning_MapsToTheGenericSocketErrorAndIsNamed(int errno, string name)
    {
        Assert.Equal(SocketError.SocketError, Errno.ToSocketError(errno));
        Assert.Equal(name, Errno.Name(errno));
    }

    [Theory]
    [InlineData(0)]
    [InlineData(71)] // EPROTO
    [InlineData(112)] // EHOSTDOWN
    [InlineData(4095)]
    public void ToSocketError_ErrnoTheBackendDoesNotKnow_MapsToTheGenericSocketErrorAndIsNamedByNumber(int errno)
    {
        Assert.Equal(SocketError.SocketError, Errno.ToSocketError(errno));
        Assert.Equal($"errno {errno}", Errno.Name(errno));
    }

    [Fact]
    public void Constants_EveryErrnoDeclared_HasARowInTheseTables()
    {
        // A new constant must be given its mapping here on purpose, not fall through to the generic error unseen.
        var tabled = new HashSet<int>(Mapped.Select(row => (int)row.Data.Item1).Concat(NamedOnly.Select(row => (int)row.Data.Item1)));
        FieldInfo[] constants = typeof(Errno).GetFields(BindingFlags.Public | BindingFlags.Static).Where(f => f.IsLiteral).ToArray();

        Assert.NotEmpty(constants);
        Assert.All(constants, field =>
        {
            int value = (int)field.GetRawConstantValue()!;
            Assert.True(tabled.Contains(value), $"Errno.{field.Name} ({value}) has no row in {nameof(ErrnoTests)}.");
            Assert.Equal(field.Name, Errno.Name(value));
        });
        Assert.Equal(constants.Length, tabled.Count);
    }
}
