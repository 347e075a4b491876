using System.Net;
using System.Net.Sockets;

namespace KestrelProactor.Tests.Infrastructure;

/// <summary>Raw client sockets for either kind of endpoint a test server listens on.</summary>
internal static class ClientSocket
{
    /// <summary>An unconnected stream socket of <paramref name="target"/>'s address family.</summary>
    public static Socket For(EndPoint target) => target switch
    {
        UnixDomainSocketEndPoint => new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified),
        _ => new Socket(target.AddressFamily, SocketType.Stream, ProtocolType.Tcp),
    };

    /// <summary>Makes every connection of <paramref name="handler"/> reach <paramref name="target"/>, whatever host a request names.</summary>
    public static void RouteTo(SocketsHttpHandler handler, EndPoint target)
    {
        handler.ConnectCallback = async (_, cancellationToken) =>
        {
            Socket socket = For(target);
            try
            {
                await socket.ConnectAsync(target, cancellationToken);
                return new NetworkStream(socket, ownsSocket: true);
            }
            catch
            {
                socket.Dispose();
                throw;
            }
        };
    }
}
