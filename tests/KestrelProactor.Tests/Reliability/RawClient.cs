using System.Net;
using System.Net.Sockets;
using System.Text;
using KestrelProactor.Tests.Infrastructure;

namespace KestrelProactor.Tests.Reliability;

/// <summary>How the server ended a connection, as the client saw it.</summary>
public enum ConnectionEnd
{
    /// <summary>FIN: a read returned 0.</summary>
    Closed,

    /// <summary>RST: a read failed with ECONNRESET.</summary>
    Reset,

    /// <summary>Still open when the client gave up waiting.</summary>
    StillOpen,
}

/// <summary>Bare sockets for the fault tests: they must decide exactly what is sent, when, and how it ends.</summary>
internal static class RawClient
{
    public static async Task<Socket> ConnectAsync(IPEndPoint endPoint, int? receiveBufferSize = null)
    {
        var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        if (receiveBufferSize is int size)
        {
            // Set before connecting so the window the server sees is small from the start.
            socket.ReceiveBufferSize = size;
        }

        try
        {
            await socket.ConnectAsync(endPoint).DefaultTimeout();
            return socket;
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }

    public static async Task SendAsync(Socket socket, ReadOnlyMemory<byte> data)
    {
        for (int sent = 0; sent < data.Length;)
        {
            sent += await socket.SendAsync(data[sent..]).AsTask().DefaultTimeout();
        }
    }

    public static Task SendAsync(Socket socket, string ascii) => SendAsync(socket, Encoding.ASCII.GetBytes(ascii));

    /// <summary>Closes with RST: a zero linger time makes close() abort the connection.</summary>
    public static void Reset(Socket socket)
    {
        socket.LingerState = new LingerOption(true, 0);
        socket.Dispose();
    }

    /// <summary>Reads until the server ends the connection or <paramref name="timeout"/> passes; returns how it ended and what was read.</summary>
    public static async Task<(ConnectionEnd End, byte[] Received)> ReadToEndAsync(Socket socket, TimeSpan timeout, int keep = 64 * 1024)
    {
        using var received = new MemoryStream();
        var buffer = new byte[16 * 1024];
        using var cts = new CancellationTokenSource(timeout);
        try
        {
            while (true)
            {
                int n = await socket.ReceiveAsync(buffer, SocketFlags.None, cts.Token);
                if (n == 0)
                {
                    return (ConnectionEnd.Closed, received.ToArray());
                }

                received.Write(buffer, 0, (int)Math.Min(n, Math.Max(0, keep - received.Length)));
            }
        }
        catch (SocketException ex) when (ex.SocketErrorCode is SocketError.ConnectionReset or SocketError.ConnectionAborted)
        {
            return (ConnectionEnd.Reset, received.ToArray());
        }
        catch (OperationCanceledException) when (cts.IsCancellationRequested)
        {
            return (ConnectionEnd.StillOpen, received.ToArray());
        }
    }

    /// <summary>One GET with <c>Connection: close</c> on a fresh connection; returns the whole response as text.</summary>
    public static async Task<string> GetAsync(IPEndPoint endPoint, string path)
    {
        using Socket socket = await ConnectAsync(endPoint);
        await SendAsync(socket, $"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        var (end, received) = await ReadToEndAsync(socket, TestTimeouts.Default);
        Assert.Equal(ConnectionEnd.Closed, end);
        return Encoding.ASCII.GetString(received);
    }
}
