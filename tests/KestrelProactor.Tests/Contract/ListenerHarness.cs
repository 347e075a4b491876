using System.Net;
using System.Net.Sockets;
using KestrelProactor.Tests.Infrastructure;
using Microsoft.AspNetCore.Connections;
using Microsoft.Extensions.Logging;

namespace KestrelProactor.Tests.Contract;

/// <summary>
/// One bound listener of one transport kind, with the connections it accepted and the raw clients a test opened.
/// Disposing tears everything down in Kestrel's order (clients, connections, unbind, listener, factory), each step
/// under a time-out, so a test only has to <c>await using</c> it.
/// </summary>
internal sealed class ListenerHarness : IAsyncDisposable
{
    private readonly List<ConnectionContext> _connections = [];
    private readonly List<Socket> _clients = [];
    private readonly Lock _gate = new();
    private UnixSocketPath? _unixPath;
    private bool _listenerDisposed;
    private bool _disposed;

    private ListenerHarness(IConnectionListenerFactory factory, IConnectionListener listener)
    {
        Factory = factory;
        Listener = listener;
    }

    public IConnectionListenerFactory Factory { get; }

    public IConnectionListener Listener { get; }

    public EndPoint EndPoint => Listener.EndPoint;

    /// <summary>The bound TCP port (only for IP endpoints).</summary>
    public int Port => ((IPEndPoint)Listener.EndPoint).Port;

    /// <summary>Binds a listener of <paramref name="kind"/> on a fresh endpoint of the <paramref name="endpoint"/> kind.</summary>
    public static async Task<ListenerHarness> BindAsync(
        TransportKind kind,
        TransportEndpoint endpoint,
        Action<ProactorTransportOptions>? configure = null,
        TrackingMemoryPool? memoryPool = null,
        ILoggerFactory? loggerFactory = null)
    {
        UnixSocketPath? unixPath = endpoint == TransportEndpoint.Unix ? new UnixSocketPath() : null;
        try
        {
            ListenerHarness harness = await BindAsync(kind, unixPath?.EndPoint, configure, memoryPool, loggerFactory);
            harness._unixPath = unixPath;
            return harness;
        }
        catch
        {
            unixPath?.Dispose();
            throw;
        }
    }

    /// <summary>Binds a listener of <paramref name="kind"/> on <paramref name="endpoint"/> (127.0.0.1:0 when null).</summary>
    public static async Task<ListenerHarness> BindAsync(
        TransportKind kind,
        EndPoint? endpoint = null,
        Action<ProactorTransportOptions>? configure = null,
        TrackingMemoryPool? memoryPool = null,
        ILoggerFactory? loggerFactory = null)
    {
        IConnectionListenerFactory factory = ContractTransports.Create(kind, configure, memoryPool, loggerFactory);
        ListenerHarness harness;
        try
        {
            IConnectionListener listener = await factory.BindAsync(endpoint ?? new IPEndPoint(IPAddress.Loopback, 0)).DefaultTimeout();
            harness = new ListenerHarness(factory, listener);
        }
        catch
        {
            await DisposeFactoryAsync(factory);
            throw;
        }

        try
        {
            TransportPresets.AssertInEffect(kind, factory);
            return harness;
        }
        catch
        {
            await harness.DisposeAsync();
            throw;
        }
    }

    /// <summary>Accepts one connection, failing the test when the listener reports none.</summary>
    public async Task<ConnectionContext> AcceptAsync()
    {
        ConnectionContext? connection = await Listener.AcceptAsync().DefaultTimeout();
        Assert.NotNull(connection);
        Track(connection);
        return connection;
    }

    /// <summary>Adds a connection accepted outside <see cref="AcceptAsync"/> so it is disposed with the harness.</summary>
    public void Track(ConnectionContext connection)
    {
        lock (_gate)
        {
            _connections.Add(connection);
        }
    }

    /// <summary>Connects a raw client socket to the listener (to <paramref name="target"/> when given).</summary>
    public async Task<Socket> ConnectAsync(EndPoint? target = null)
    {
        target ??= EndPoint;
        Socket client = ClientSocket.For(target);
        lock (_gate)
        {
            _clients.Add(client);
        }

        await client.ConnectAsync(target).DefaultTimeout();
        return client;
    }

    /// <summary>Connects a client and accepts its connection.</summary>
    public async Task<(Socket Client, ConnectionContext Connection)> ConnectAndAcceptAsync()
    {
        Socket client = await ConnectAsync();
        ConnectionContext connection = await AcceptAsync();
        return (client, connection);
    }

    /// <summary>Disposes a connection the test is done with; the harness will not dispose it again.</summary>
    public async Task DisposeConnectionAsync(ConnectionContext connection)
    {
        lock (_gate)
        {
            _connections.Remove(connection);
        }

        await connection.DisposeAsync().DefaultTimeout();
    }

    /// <summary>Disposes the listener (without unbinding first); the harness will not touch it again.</summary>
    public async Task DisposeListenerAsync()
    {
        _listenerDisposed = true;
        await Listener.DisposeAsync().DefaultTimeout();
    }

    public async ValueTask DisposeAsync()
    {
        Socket[] clients;
        ConnectionContext[] connections;
        lock (_gate)
        {
            if (_disposed)
            {
                return;
            }

            _disposed = true;
            clients = [.. _clients];
            connections = [.. _connections];
        }

        foreach (Socket client in clients)
        {
            client.Dispose();
        }

        await Task.WhenAll(connections.Select(c => c.DisposeAsync().AsTask())).LongTimeout();
        if (!_listenerDisposed)
        {
            await Listener.UnbindAsync().DefaultTimeout();
            await Listener.DisposeAsync().DefaultTimeout();
        }

        await DisposeFactoryAsync(Factory);
        _unixPath?.Dispose();
    }

    private static async Task DisposeFactoryAsync(IConnectionListenerFactory factory)
    {
        switch (factory)
        {
            case IAsyncDisposable asyncDisposable:
                await asyncDisposable.DisposeAsync().DefaultTimeout();
                break;
            case IDisposable disposable:
                disposable.Dispose();
                break;
        }
    }
}
