using System.Net;
using System.Net.Sockets;
using KestrelProactor.Dispatching;
using KestrelProactor.Internal;
using KestrelProactor.Tests.Infrastructure;
using Microsoft.AspNetCore.Connections;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace KestrelProactor.Tests.Dispatching;

/// <summary>
/// <see cref="ProactorTransportOptions.AcceptOnEveryDispatcher"/>: a listen socket per dispatcher on the endpoint's
/// port (SO_REUSEPORT), each dispatcher keeping what it accepts, one listener for Kestrel. (The contract and end-to-end
/// suites also run under the option: <see cref="TransportKind.ProactorAcceptEverywhere"/>.)
/// </summary>
[Collection(DispatcherHookCollection.Name)]
public sealed class AcceptOnEveryDispatcherTests
{
    private const int Connections = 48;

    [Fact]
    public async Task EveryDispatcherAccepts_AndKeepsWhatItAccepted()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "io_uring");
        (ProactorTransportFactory factory, IConnectionListener listener) = await BindAsync(new IPEndPoint(IPAddress.Loopback, 0));
        var clients = new List<Socket>();
        var accepted = new List<ProactorConnection>();
        try
        {
            // Arrange: one member per dispatcher, all on the endpoint's port.
            var group = Assert.IsType<ProactorListenerGroup>(listener);
            ProactorDispatcher[] dispatchers = factory.Backend!.Dispatchers;
            Assert.Equal(dispatchers.Length, group.Members.Count);
            Assert.Equal(dispatchers.OrderBy(d => d.Id), group.Members.Select(m => m.AcceptDispatcher).OrderBy(d => d.Id));
            Assert.All(group.Members, m => Assert.Equal(((IPEndPoint)listener.EndPoint).Port, ((IPEndPoint)m.EndPoint).Port));

            // Act: connections one at a time from as many client ports; each carries a byte.
            for (int i = 0; i < Connections; i++)
            {
                long[] before = group.Members.Select(m => m.AcceptedConnections).ToArray();
                var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
                clients.Add(client);
                await client.ConnectAsync(listener.EndPoint).DefaultTimeout();
                var connection = (ProactorConnection)(await listener.AcceptAsync().AsTask().DefaultTimeout())!;
                accepted.Add(connection);

                // The member that accepted it (its count moved; counted before the connection was queued) is the
                // one whose dispatcher runs it: no connection is handed to another ring.
                ProactorConnectionListener acceptor = Assert.Single(group.Members.Where((m, index) => m.AcceptedConnections != before[index]));
                Assert.Same(acceptor.AcceptDispatcher, connection.Dispatcher);
                await client.SendAsync(new byte[] { (byte)i }).DefaultTimeout();
                System.IO.Pipelines.ReadResult read = await connection.Transport.Input.ReadAsync().AsTask().DefaultTimeout();
                Assert.Equal((byte)i, read.Buffer.FirstSpan[0]);
                connection.Transport.Input.AdvanceTo(read.Buffer.End);
            }

            // Assert: the kernel spread them over every member, and each member's dispatcher holds exactly the
            // connections that member accepted.
            Assert.All(group.Members, m => Assert.True(m.AcceptedConnections > 0, $"dispatcher {m.AcceptDispatcher.Id} accepted nothing of {Connections}"));
            Assert.Equal(Connections, group.Members.Sum(m => m.AcceptedConnections));
            foreach (ProactorConnectionListener member in group.Members)
            {
                Assert.Equal(member.AcceptedConnections, accepted.Count(c => ReferenceEquals(c.Dispatcher, member.AcceptDispatcher)));
            }
        }
        finally
        {
            foreach (Socket client in clients)
            {
                client.Dispose();
            }

            foreach (ProactorConnection connection in accepted)
            {
                await connection.DisposeAsync().AsTask().DefaultTimeout();
            }

            await listener.DisposeAsync().DefaultTimeout();
            await factory.DisposeAsync().AsTask().DefaultTimeout();
        }
    }

    [Fact]
    public async Task PortAlreadyServedByAnotherGroup_BindFailsWithAddressInUse()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "io_uring");
        (ProactorTransportFactory first, IConnectionListener listener) = await BindAsync(new IPEndPoint(IPAddress.Loopback, 0));
        ProactorTransportFactory second = CreateFactory();
        try
        {
            // Both set SO_REUSEPORT (same user): without a check the second would silently share the port.
            await Assert.ThrowsAsync<AddressInUseException>(async () => await second.BindAsync(listener.EndPoint).DefaultTimeout());
        }
        finally
        {
            await listener.DisposeAsync().DefaultTimeout();
            await first.DisposeAsync().AsTask().DefaultTimeout();
            await second.DisposeAsync().AsTask().DefaultTimeout();
        }
    }

    [Fact]
    public async Task Unbind_EndsAcceptingAndClosesEverySocket()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "io_uring");
        (ProactorTransportFactory factory, IConnectionListener listener) = await BindAsync(new IPEndPoint(IPAddress.Loopback, 0));
        try
        {
            ValueTask<ConnectionContext?> pending = listener.AcceptAsync();
            await listener.UnbindAsync().DefaultTimeout();
            Assert.Null(await pending.AsTask().DefaultTimeout());
            Assert.All(factory.Backend!.Dispatchers, d => Assert.Equal(0, d.ConnectionCount));

            // No member's socket is left listening on the port.
            using var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            SocketException refused = await Assert.ThrowsAsync<SocketException>(async () => await client.ConnectAsync(listener.EndPoint).DefaultTimeout());
            Assert.Equal(SocketError.ConnectionRefused, refused.SocketErrorCode);
        }
        finally
        {
            await listener.DisposeAsync().DefaultTimeout();
            await factory.DisposeAsync().AsTask().DefaultTimeout();
        }
    }

    [Fact]
    public async Task ADispatcherFails_ItsSocketMovesToTheSurvivor_AndEveryConnectionIsStillAccepted()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "io_uring");
        (ProactorTransportFactory factory, IConnectionListener listener) = await BindAsync(new IPEndPoint(IPAddress.Loopback, 0));
        var clients = new List<Socket>();
        var accepted = new List<ConnectionContext>();
        try
        {
            var group = (ProactorListenerGroup)listener;
            ProactorDispatcher failing = group.Members[0].AcceptDispatcher;
            ProactorDispatcher survivor = group.Members[1].AcceptDispatcher;
            await FailAsync(failing);
            await DispatcherEndDrainTests.WaitUntilAsync(() => group.Members.All(m => ReferenceEquals(m.AcceptDispatcher, survivor)));

            // Whichever socket the kernel picks for a connection, the survivor accepts it.
            for (int i = 0; i < Connections / 2; i++)
            {
                var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
                clients.Add(client);
                await client.ConnectAsync(listener.EndPoint).DefaultTimeout();
                ConnectionContext connection = (await listener.AcceptAsync().AsTask().DefaultTimeout())!;
                accepted.Add(connection);
                Assert.Same(survivor, ((ProactorConnection)connection).Dispatcher);
            }

            Assert.All(group.Members, m => Assert.True(m.AcceptedConnections > 0, "a socket of the group was never accepted from"));
        }
        finally
        {
            foreach (Socket client in clients)
            {
                client.Dispose();
            }

            foreach (ConnectionContext connection in accepted)
            {
                await connection.DisposeAsync().AsTask().DefaultTimeout();
            }

            await listener.DisposeAsync().DefaultTimeout();
            await factory.DisposeAsync().AsTask().DefaultTimeout();
        }
    }

    [Fact]
    public async Task UnixDomainSocket_KeepsOneListenSocket()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "io_uring");
        string path = Path.Combine(Path.GetTempPath(), $"kp-accept-{Guid.NewGuid():N}.sock");
        (ProactorTransportFactory factory, IConnectionListener listener) = await BindAsync(new UnixDomainSocketEndPoint(path));
        try
        {
            Assert.IsType<ProactorConnectionListener>(listener);
        }
        finally
        {
            await listener.DisposeAsync().DefaultTimeout();
            await factory.DisposeAsync().AsTask().DefaultTimeout();
            File.Delete(path);
        }
    }

    private static ProactorTransportFactory CreateFactory()
        => new(Options.Create(TransportFactories.CreateOptions(TransportKind.ProactorAcceptEverywhere)), LoggerFactory.Create(_ => { }));

    private static async Task<(ProactorTransportFactory, IConnectionListener)> BindAsync(EndPoint endpoint)
    {
        ProactorTransportFactory factory = CreateFactory();
        IConnectionListener listener = await factory.BindAsync(endpoint).DefaultTimeout();
        return (factory, listener);
    }

    private static async Task FailAsync(ProactorDispatcher target)
    {
        try
        {
            ProactorDispatcher.TestLoopHook = d =>
            {
                if (ReferenceEquals(d, target))
                {
                    throw new InvalidOperationException("injected ring failure");
                }
            };
            target.Schedule(static _ => { }, null);
            await target.Ended.DefaultTimeout();
        }
        finally
        {
            ProactorDispatcher.TestLoopHook = null;
        }
    }
}
