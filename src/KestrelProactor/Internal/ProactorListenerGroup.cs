using System.Net;
using System.Net.Sockets;
using System.Threading.Channels;
using KestrelProactor.Dispatching;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Server.Kestrel.Transport.Sockets;
using Microsoft.Extensions.Logging;

namespace KestrelProactor.Internal;

/// <summary>
/// A TCP endpoint served with <see cref="ProactorTransportOptions.AcceptOnEveryDispatcher"/>: one listen socket per
/// dispatcher, all bound to the endpoint with SO_REUSEPORT, so the kernel spreads incoming connections over them (by a
/// hash of the connection's addresses) and each dispatcher accepts its own and keeps them. No accepted connection is
/// handed to another thread, and no single ring does every accept. Kestrel sees one listener: the members write into
/// one queue, which ends once every member has stopped accepting.
/// <para>
/// Each member is a <see cref="ProactorConnectionListener"/> of its own and behaves as one: a member whose dispatcher
/// fails moves its listen socket to a survivor, so the connections waiting in that socket's backlog are still
/// accepted (the kernel does not move them to another socket of the group).
/// </para>
/// </summary>
internal sealed class ProactorListenerGroup : IConnectionListener
{
    private const int SolSocket = 1;
    private const int SoReusePort = 15;

    private readonly Lock _gate = new();
    private ProactorConnectionListener[] _members = [];
    private int _live;
    private Exception? _firstError;
    private volatile bool _unbinding;
    private Func<bool>? _isUnbinding;

    private ProactorListenerGroup()
    {
    }

    /// <summary>The queue Kestrel's accepts read, written by every member.</summary>
    public Channel<ProactorConnection> Accepted { get; } = Channel.CreateUnbounded<ProactorConnection>(
        new UnboundedChannelOptions { SingleReader = true, SingleWriter = false, AllowSynchronousContinuations = false });

    public EndPoint EndPoint { get; private set; } = null!;

    /// <summary>The members, one per dispatcher that was running at the bind (for tests).</summary>
    internal IReadOnlyList<ProactorConnectionListener> Members => _members;

    /// <summary>
    /// Whether an endpoint can be spread: TCP over IP on Linux, with two or more dispatchers running. A Unix domain
    /// socket has no SO_REUSEPORT spreading, and IOCP accepts through one socket.
    /// </summary>
    public static bool CanSpread(EndPoint endpoint) => OperatingSystem.IsLinux() && endpoint is IPEndPoint;

    /// <summary>The dispatchers a group would spread over now: those running (a group needs two or more).</summary>
    public static ProactorDispatcher[] LiveDispatchers(ProactorBackend backend)
        => backend.Dispatchers.Where(static d => !d.HasFailed && !d.HasEnded && !d.StopRequested).ToArray();

    public static IConnectionListener Bind(ProactorBackend backend, ProactorDispatcher[] dispatchers, IPEndPoint endpoint, ProactorTransportOptions options, ILogger logger)
    {
        if (endpoint.Port != 0)
        {
            // A port someone already listens on fails here, as it would without the option, rather than joining
            // that listener's group when it also set SO_REUSEPORT (same user). A bind alone tells; nothing listens.
            try
            {
                SocketTransportOptions.CreateDefaultBoundListenSocket(endpoint).Dispose();
            }
            catch (SocketException ex) when (ex.SocketErrorCode == SocketError.AddressAlreadyInUse)
            {
                throw new AddressInUseException(ex.Message, ex);
            }
        }

        var group = new ProactorListenerGroup();
        var sockets = new List<Socket>(dispatchers.Length);
        var members = new ProactorConnectionListener[dispatchers.Length];
        try
        {
            EndPoint bindTo = endpoint;
            for (int i = 0; i < dispatchers.Length; i++)
            {
                Socket socket = ProactorConnectionListener.BindSocket(bindTo, options, reusePort: true);
                sockets.Add(socket);
                // Port 0: the first socket's port is the group's.
                bindTo = socket.LocalEndPoint!;
                members[i] = ProactorConnectionListener.CreateMember(backend, dispatchers[i], socket, options, logger, group);
            }
        }
        catch
        {
            foreach (Socket socket in sockets)
            {
                socket.Dispose();
            }

            throw;
        }

        group._members = members;
        group._live = members.Length;
        group.EndPoint = members[0].EndPoint;
        foreach (ProactorConnectionListener member in members)
        {
            member.Start();
        }

        return group;
    }

    /// <summary>A listen socket with SO_REUSEPORT set before its bind (every socket of a group must have it), bound.</summary>
    internal static Socket CreateReusePortSocket(IPEndPoint endpoint)
    {
        var socket = new Socket(endpoint.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            if (endpoint.Address.Equals(IPAddress.IPv6Any))
            {
                socket.DualMode = true;
            }

            socket.SetRawSocketOption(SolSocket, SoReusePort, BitConverter.GetBytes(1));
            socket.Bind(endpoint);
            return socket;
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }

    public ValueTask<ConnectionContext?> AcceptAsync(CancellationToken cancellationToken = default)
        => AcceptQueue.NextAsync(Accepted.Reader, _isUnbinding ??= () => _unbinding, cancellationToken);

    public async ValueTask UnbindAsync(CancellationToken cancellationToken = default)
    {
        _unbinding = true;
        await Task.WhenAll(_members.Select(member => member.UnbindAsync(cancellationToken).AsTask())).ConfigureAwait(false);
    }

    public async ValueTask DisposeAsync()
    {
        await UnbindAsync().ConfigureAwait(false);
        await AcceptQueue.CloseNeverAcceptedAsync(Accepted.Reader).ConfigureAwait(false);
    }

    /// <summary>
    /// A member stopped accepting (an unbind, a stop, or a failure it could not move away from): the queue ends with
    /// the last one, with the first failure unless the group was being unbound.
    /// </summary>
    internal void OnMemberEnded(Exception? error)
    {
        lock (_gate)
        {
            _firstError ??= error;
            if (--_live == 0)
            {
                // An error ends Kestrel's accepts only when the last member to end failed: a stop after an old
                // failure of one member ends them quietly.
                Accepted.Writer.TryComplete(_unbinding || error is null ? null : _firstError);
            }
        }
    }
}
