using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using System.Text;
using static KestrelProactor.Interop.Linux.Interop;

namespace KestrelProactor.IoUring;

/// <summary>Turns a Linux sockaddr (from getsockname/getpeername) into an <see cref="EndPoint"/>.</summary>
internal static class SocketAddressConverter
{
    public static EndPoint? ToEndPoint(ReadOnlySpan<byte> sockaddr)
    {
        ushort family = BitConverter.ToUInt16(sockaddr);
        switch (family)
        {
            case Sys.AF_INET when sockaddr.Length >= 16:
                return new IPEndPoint(new IPAddress(sockaddr.Slice(4, 4)), BinaryPrimitives.ReadUInt16BigEndian(sockaddr.Slice(2)));
            case Sys.AF_INET6 when sockaddr.Length >= 28:
                uint scope = BitConverter.ToUInt32(sockaddr.Slice(24));
                return new IPEndPoint(new IPAddress(sockaddr.Slice(8, 16), scope), BinaryPrimitives.ReadUInt16BigEndian(sockaddr.Slice(2)));
            case Sys.AF_UNIX:
                ReadOnlySpan<byte> path = sockaddr.Slice(2);
                int end = path.IndexOf((byte)0);
                if (end >= 0 && !(end == 0 && path.Length > 1))
                {
                    path = path.Slice(0, end);
                }

                if (path.IsEmpty)
                {
                    // An unnamed socket (a client that did not bind): Kestrel accepts a null endpoint.
                    return null;
                }

                return path[0] == 0
                    ? new UnixDomainSocketEndPoint("\0" + Encoding.UTF8.GetString(path.Slice(1)))
                    : new UnixDomainSocketEndPoint(Encoding.UTF8.GetString(path));
            default:
                return null;
        }
    }
}
