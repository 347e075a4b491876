using System.Net;
using System.Net.Sockets;
using KestrelProactor.Tests.EndToEnd;
using KestrelProactor.Tests.Infrastructure;

namespace KestrelProactor.Tests.Reliability;

/// <summary>
/// A well-behaved keep-alive client that is connected before a fault and asks again during or after it: the
/// fault must cost only the faulty connection.
/// </summary>
internal sealed class Bystander : IDisposable
{
    private readonly Socket _socket;
    private readonly RawHttp _http;

    private Bystander(Socket socket)
    {
        _socket = socket;
        _http = new RawHttp(socket);
    }

    public static async Task<Bystander> ConnectAsync(IPEndPoint endPoint)
    {
        var bystander = new Bystander(await RawClient.ConnectAsync(endPoint));
        await bystander.AssertServedAsync();
        return bystander;
    }

    /// <summary>One GET /hello on the same connection; it must answer 200.</summary>
    public async Task AssertServedAsync()
    {
        using var cts = new CancellationTokenSource(TestTimeouts.Default);
        await _http.SendAsciiAsync("GET /hello HTTP/1.1\r\nHost: localhost\r\n\r\n", cts.Token);
        var (statusLine, _, body) = await _http.ReadResponseAsync(cts.Token);
        Assert.Equal("HTTP/1.1 200 OK", statusLine);
        Assert.Equal("hello"u8.ToArray(), body);
    }

    public void Dispose() => _socket.Dispose();
}
