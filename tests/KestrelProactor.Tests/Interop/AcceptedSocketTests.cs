using System.Net;
using System.Net.Sockets;
using KestrelProactor.Internal;
using KestrelProactor.Tests.Contract;
using KestrelProactor.Tests.Infrastructure;
using Microsoft.AspNetCore.Connections;

namespace KestrelProactor.Tests.Interop;

/// <summary>The descriptor of an accepted connection is set up like the socket transport's (io_uring).</summary>
public sealed class AcceptedSocketTests
{
    public static TheoryData<TransportKind, bool> KindsAndFamilies => new()
    {
        { TransportKind.Proactor, false },
        { TransportKind.ProactorSingleShot, false },
        { TransportKind.ProactorBasicTier, false },
        { TransportKind.Proactor, true },
    };

    [Theory]
    [MemberData(nameof(KindsAndFamilies))]
    public async Task AcceptedDescriptor_IsNonBlocking(TransportKind kind, bool unixSocket)
    {
        // Multishot and single-shot accepts both; over TCP and a Unix domain socket.
        string directory = Directory.CreateTempSubdirectory("kp-accept-").FullName;
        try
        {
            EndPoint endpoint = unixSocket
                ? new UnixDomainSocketEndPoint(Path.Combine(directory, "listener.sock"))
                : new IPEndPoint(IPAddress.Loopback, 0);
            await using ListenerHarness harness = await ListenerHarness.BindAsync(kind, endpoint);

            // Act
            (Socket _, ConnectionContext connection) = await harness.ConnectAndAcceptAsync();

            // Assert: nothing of the transport needs a blocking socket (io_uring waits for readiness itself), and an
            // application that borrows the descriptor must not block a thread on it, as with the socket transport.
            Assert.True(SocketDescriptor.IsNonBlocking(((ProactorConnection)connection).Socket), "the accepted descriptor is blocking");
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }

    [Fact]
    public async Task ConfiguringAClosedHandle_Throws_RatherThanUsingItsStaleDescriptorNumber()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "io_uring");
        await using ListenerHarness harness = await ListenerHarness.BindAsync(TransportKind.Proactor);
        var dispatcher = ((ProactorTransportFactory)harness.Factory).Backend!.Dispatchers[0];
        var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        System.Runtime.InteropServices.SafeHandle handle = socket.SafeHandle;
        socket.Dispose();

        // Act and assert: the handle is held while its number is used, so a closed one is refused; its number may
        // already name another descriptor of the process, whose options would change instead.
        Assert.True(handle.IsClosed);
        Assert.Throws<ObjectDisposedException>(() => dispatcher.ConfigureAcceptedSocket(handle, noDelay: true));
    }
}
