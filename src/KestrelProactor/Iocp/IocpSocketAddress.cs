using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using System.Text;
using static KestrelProactor.Interop.Windows.Interop;

namespace KestrelProactor.Iocp;

/// <summary>Turns a Winsock sockaddr (from getsockname/getpeername) into an <see cref="EndPoint"/>.</summary>
internal static class IocpSocketAddress
{
    public static EndPoint? ToEndPoint(ReadOnlySpan<byte> sockaddr)
    {
        ushort family = BitConverter.ToUInt16(sockaddr);
        switch (family)
        {
            case Winsock.AF_INET when sockaddr.Length >= 16:
                return new IPEndPoint(new IPAddress(sockaddr.Slice(4, 4)), BinaryPrimitives.ReadUInt16BigEndian(sockaddr.Slice(2)));
            case Winsock.AF_INET6 when sockaddr.Length >= 28:
                uint scope = BitConverter.ToUInt32(sockaddr.Slice(24));
                return new IPEndPoint(new IPAddress(sockaddr.Slice(8, 16), scope), BinaryPrimitives.ReadUInt16BigEndian(sockaddr.Slice(2)));
            case Winsock.AF_UNIX:
                ReadOnlySpan<byte> path = sockaddr.Slice(2);
                int end = path.IndexOf((byte)0);
                path = end >= 0 ? path.Slice(0, end) : path;
                return path.IsEmpty ? null : new UnixDomainSocketEndPoint(Encoding.UTF8.GetString(path));
            default:
                return null;
        }
    }
}
