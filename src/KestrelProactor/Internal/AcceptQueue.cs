using System.Threading.Channels;
using Microsoft.AspNetCore.Connections;

namespace KestrelProactor.Internal;

/// <summary>
/// The queue of accepted connections between a dispatcher's accepts and Kestrel's accept loop, as a listener
/// (<see cref="ProactorConnectionListener"/>) and a listener group (<see cref="ProactorListenerGroup"/>) both read it.
/// </summary>
internal static class AcceptQueue
{
    /// <summary>
    /// The next accepted connection, started, or null once the queue ended or <paramref name="unbinding"/> says the
    /// listener is being unbound (what is still queued then is closed by <see cref="CloseNeverAcceptedAsync"/>).
    /// </summary>
    public static async ValueTask<ConnectionContext?> NextAsync(ChannelReader<ProactorConnection> accepted, Func<bool> unbinding, CancellationToken cancellationToken)
    {
        while (!unbinding() && await accepted.WaitToReadAsync(cancellationToken).ConfigureAwait(false))
        {
            if (unbinding())
            {
                break;
            }

            if (accepted.TryRead(out ProactorConnection? connection))
            {
                connection.Start();
                return connection;
            }
        }

        return null;
    }

    /// <summary>At a listener's disposal: connections accepted but never handed to Kestrel are closed.</summary>
    public static async ValueTask CloseNeverAcceptedAsync(ChannelReader<ProactorConnection> accepted)
    {
        while (accepted.TryRead(out ProactorConnection? connection))
        {
            connection.Abort(new ConnectionAbortedException("The listener was disposed before the connection was accepted."));
            await connection.DisposeAsync().ConfigureAwait(false);
        }
    }
}
