using System.Net;
using System.Net.Sockets;
using KestrelProactor.Tests.Contract;
using KestrelProactor.Tests.Infrastructure;

namespace KestrelProactor.Windows.Tests.Iocp;

/// <summary>
/// Pins down, with plain .NET sockets (no transport involved), the Wine behaviour some shared tests skip for. If
/// Wine changes, this test fails and the skips can go.
/// </summary>
public sealed class WineDeviationTests
{
    [Fact]
    public async Task Receive_AfterPeerResetAlreadyArrived_WineReadsEndOfStreamWindowsReportsReset()
    {
        Assert.SkipUnless(OperatingSystem.IsWindows(), "A Windows (or Wine) behaviour.");
        using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listener.Listen();
        using var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        await client.ConnectAsync(listener.LocalEndPoint!).DefaultTimeout();
        using Socket server = await listener.AcceptAsync().DefaultTimeout();

        // Act: the RST is processed before the server issues its receive.
        RawClient.Reset(client);
        await Task.Delay(300);
        SocketError outcome;
        try
        {
            outcome = server.Receive(new byte[16]) == 0 ? SocketError.Success : SocketError.SocketError;
        }
        catch (SocketException ex)
        {
            outcome = ex.SocketErrorCode;
        }

        // Assert
        Assert.Equal(TestHost.IsWine ? SocketError.Success : SocketError.ConnectionReset, outcome);
    }
}
