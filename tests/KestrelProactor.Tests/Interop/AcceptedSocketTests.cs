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
}
