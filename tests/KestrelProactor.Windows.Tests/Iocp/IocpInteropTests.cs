using KestrelProactor.Iocp;
using static KestrelProactor.Interop.Windows.Interop;

namespace KestrelProactor.Windows.Tests.Iocp;

/// <summary>The native layouts the kernel reads and writes (x64 sizes from the Windows SDK headers).</summary>
public sealed unsafe class IocpInteropTests
{
    [Fact]
    public void Structs_HaveTheWindowsX64Sizes()
    {
        Assert.Equal(32, sizeof(Kernel32.OVERLAPPED));
        Assert.Equal(32, sizeof(Kernel32.OVERLAPPED_ENTRY));
        Assert.Equal(16, sizeof(Winsock.WSABUF));
        Assert.Equal(4, sizeof(Winsock.linger));
    }

    [Fact]
    public void OperationHeader_StartsWithTheOverlappedAndFitsInOneCacheLine()
    {
        // A dequeued packet's OVERLAPPED* is read back as the header: the OVERLAPPED must be the first field.
        IocpOperationHeader header = default;
        Assert.Equal(0, (int)((byte*)&header.Overlapped - (byte*)&header));
        Assert.Equal(32, (int)((byte*)&header.UserData - (byte*)&header));
        Assert.Equal(64, sizeof(IocpOperationHeader));
    }

    [Fact]
    public void NtStatus_ReceiveEndings_MapToTheErrorsTheSharedCodeExpects()
    {
        Assert.Equal(System.Net.Sockets.SocketError.OperationAborted, NtStatus.ToSocketError(NtStatus.STATUS_CANCELLED));
        Assert.Equal(System.Net.Sockets.SocketError.ConnectionReset, NtStatus.ToSocketError(NtStatus.STATUS_CONNECTION_RESET));
        // Wine's warning status for a receive pending at close is an end of the connection, not a success.
        Assert.NotEqual(System.Net.Sockets.SocketError.Success, NtStatus.ToSocketError(NtStatus.STATUS_HANDLES_CLOSED));
    }
}
