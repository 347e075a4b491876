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
        // Several times over: a deviation that only holds sometimes would let the skips hide a real failure.
        for (int attempt = 0; attempt < 10; attempt++)
        {
            Assert.Equal(TestHost.IsWine ? SocketError.Success : SocketError.ConnectionReset, await ReceiveAfterResetAsync());
        }
    }

    private static async Task<SocketError> ReceiveAfterResetAsync()
    {
        using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listener.Listen();
        using var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        await client.ConnectAsync(listener.LocalEndPoint!).DefaultTimeout();
        using Socket server = await listener.AcceptAsync().DefaultTimeout();

        // The RST is processed before the server issues its receive: the socket turns readable once it arrives (a
        // fixed pause did not do: on a busy machine the receive could still be issued first and meet the reset as a
        // pending receive, which Wine reports as Windows does, and the test failed).
        RawClient.Reset(client);
        Assert.True(server.Poll(TimeSpan.FromSeconds(10), SelectMode.SelectRead), "the peer's reset never arrived");
        try
        {
            return server.Receive(new byte[16]) == 0 ? SocketError.Success : SocketError.SocketError;
        }
        catch (SocketException ex)
        {
            return ex.SocketErrorCode;
        }
    }
}
