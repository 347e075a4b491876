using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Net.WebSockets;
using System.Text;

namespace KestrelProactor.FaultHost;

/// <summary>One client session: the client ports it used and when it started, for the run's verdict on its errors.</summary>
internal sealed class Session(string name)
{
    private readonly List<int> _ports = [];

    public string Name { get; } = name;

    public long Started { get; } = Stopwatch.GetTimestamp();

    public IReadOnlyList<int> Ports
    {
        get
        {
            lock (_ports)
            {
                return [.. _ports];
            }
        }
    }

    public void Used(int port)
    {
        lock (_ports)
        {
            _ports.Add(port);
        }
    }
}

/// <summary>How a session ended.</summary>
internal sealed record Outcome(Session Session, Exception? Error, bool ErrorExpected);

/// <summary>
/// The client side of a run: workers, each running sessions picked by the seed: HTTP/1.1 keep-alive and churn,
/// uploads and downloads with every byte checked, echoes, aborts by the client (a reset) and by the server, HTTP/2
/// streams, and WebSocket echoes.
/// </summary>
internal sealed class Workload(int seed, int http1Port, int http2Port, int[]? kinds = null)
{
    private static readonly TimeSpan SessionTimeout = TimeSpan.FromSeconds(20);
    private readonly List<Outcome> _outcomes = [];
    private long _nextKey = (long)seed << 20;

    public async Task<List<Outcome>> RunAsync(int workers, int sessionsPerWorker)
    {
        var tasks = new List<Task>();
        for (int w = 0; w < workers; w++)
        {
            var random = new Random(unchecked(seed * 31 + w));
            tasks.Add(Task.Run(async () =>
            {
                for (int s = 0; s < sessionsPerWorker; s++)
                {
                    await RunSessionAsync(random);
                }
            }));
        }

        await Task.WhenAll(tasks);
        return _outcomes;
    }

    private long NextKey() => Interlocked.Increment(ref _nextKey);

    private async Task RunSessionAsync(Random random)
    {
        int which = random.Next(0, 9);
        if (kinds is not null)
        {
            which = kinds[which % kinds.Length];
        }

        string[] names = ["keep-alive", "churn", "echo", "upload", "download", "client-abort", "server-abort", "http2", "websocket"];
        var session = new Session(names[which]);
        using var timeout = new CancellationTokenSource(SessionTimeout);
        CancellationToken token = timeout.Token;
        Exception? error = null;
        bool expected = false;
        try
        {
            switch (which)
            {
                case 0:
                    await KeepAliveAsync(session, random, token);
                    break;
                case 1:
                    for (int i = 0; i < 3; i++)
                    {
                        await using RawHttp http = await RawHttp.ConnectAsync(http1Port, session, token);
                        await GetBytesAsync(http, random.Next(0, 20_000), close: true, token);
                    }

                    break;
                case 2:
                    await EchoAsync(session, random.Next(1, 200_000), token);
                    break;
                case 3:
                    await UploadAsync(session, random.Next(1, 400_000), token);
                    break;
                case 4:
                {
                    await using RawHttp http = await RawHttp.ConnectAsync(http1Port, session, token);
                    await GetBytesAsync(http, random.Next(100_000, 1_500_000), close: false, token);
                    break;
                }

                case 5:
                    await ClientAbortAsync(session, random, token);
                    break;
                case 6:
                    expected = true;
                    await ServerAbortAsync(session, random.Next(2, 300_000), token);
                    break;
                case 7:
                    await Http2Async(session, random, token);
                    break;
                default:
                    await WebSocketAsync(session, random, token);
                    break;
            }
        }
        catch (Exception ex)
        {
            error = timeout.IsCancellationRequested && ex is OperationCanceledException
                ? new TimeoutException($"session {session.Name} did not end within {SessionTimeout.TotalSeconds}s; sockets: {TcpTable.Describe(session.Ports)}", ex)
                : ex;
        }

        lock (_outcomes)
        {
            _outcomes.Add(new Outcome(session, error, expected));
        }
    }

    private async Task KeepAliveAsync(Session session, Random random, CancellationToken token)
    {
        await using RawHttp http = await RawHttp.ConnectAsync(http1Port, session, token);
        int requests = random.Next(2, 8);
        for (int i = 0; i < requests; i++)
        {
            await GetBytesAsync(http, random.Next(0, 60_000), close: false, token);
        }
    }

    private async Task GetBytesAsync(RawHttp http, long size, bool close, CancellationToken token)
    {
        long key = NextKey();
        string connection = close ? "Connection: close\r\n" : "";
        await http.SendAsync($"GET /bytes?size={size}&key={key} HTTP/1.1\r\nHost: x\r\n{connection}\r\n", default, token);
        (int status, long length) = await http.ReadHeadAsync(token);
        Expect(status == 200 && length == size, $"GET /bytes size={size}: status {status} length {length}");
        await http.ReadBodyAsync(length, (offset, data) => CheckPattern(key, offset, data.Span, "GET /bytes"), token);
        if (close)
        {
            Expect(await http.ReadsEndAsync(token), "bytes after a response with Connection: close");
        }
    }

    private async Task EchoAsync(Session session, int size, CancellationToken token)
    {
        long key = NextKey();
        var body = new byte[size];
        Pattern.Fill(key, 0, body);
        await using RawHttp http = await RawHttp.ConnectAsync(http1Port, session, token);
        await http.SendAsync($"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n", body, token);
        (int status, long length) = await http.ReadHeadAsync(token);
        Expect(status == 200 && length == size, $"POST /echo size={size}: status {status} length {length}");
        await http.ReadBodyAsync(length, (offset, data) => CheckPattern(key, offset, data.Span, "POST /echo"), token);
    }

    private async Task UploadAsync(Session session, int size, CancellationToken token)
    {
        long key = NextKey();
        var body = new byte[size];
        Pattern.Fill(key, 0, body);
        await using RawHttp http = await RawHttp.ConnectAsync(http1Port, session, token);
        await http.SendAsync($"POST /upload?key={key} HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n", body, token);
        (int status, long length) = await http.ReadHeadAsync(token);
        var answer = new byte[length];
        await http.ReadBodyAsync(length, (offset, data) => data.Span.CopyTo(answer.AsSpan((int)offset)), token);
        string text = Encoding.ASCII.GetString(answer);
        // A wrong byte the server saw is counted on its side too; here the answer must be the length sent.
        Expect(status == 200 && text == "ok " + size.ToString(CultureInfo.InvariantCulture), $"POST /upload size={size}: {status} {text}");
    }

    private async Task ClientAbortAsync(Session session, Random random, CancellationToken token)
    {
        long key = NextKey();
        RawHttp http = await RawHttp.ConnectAsync(http1Port, session, token);
        try
        {
            long size = random.Next(300_000, 3_000_000);
            await http.SendAsync($"GET /bytes?size={size}&key={key} HTTP/1.1\r\nHost: x\r\n\r\n", default, token);
            if (random.Next(0, 3) != 0)
            {
                (int status, long length) = await http.ReadHeadAsync(token);
                Expect(status == 200 && length == size, $"GET /bytes (to abort): status {status}");
                long stopAt = random.Next(0, 100_000);
                try
                {
                    await http.ReadBodyAsync(length, (offset, data) =>
                    {
                        CheckPattern(key, offset, data.Span, "GET /bytes (to abort)");
                        if (offset + data.Length >= stopAt)
                        {
                            throw new StopReading();
                        }
                    }, token);
                }
                catch (StopReading)
                {
                }
            }
        }
        finally
        {
            http.Reset();
        }
    }

    private async Task ServerAbortAsync(Session session, int size, CancellationToken token)
    {
        long key = NextKey();
        await using RawHttp http = await RawHttp.ConnectAsync(http1Port, session, token);
        await http.SendAsync($"GET /abort?size={size}&key={key} HTTP/1.1\r\nHost: x\r\n\r\n", default, token);
        (int status, long length) = await http.ReadHeadAsync(token);
        Expect(status == 200 && length == size, $"GET /abort: status {status}");
        await http.ReadBodyAsync(length, (offset, data) =>
        {
            CheckPattern(key, offset, data.Span, "GET /abort");
            if (offset + data.Length > size / 2)
            {
                throw new WrongBytesException($"GET /abort size={size}: more than the {size / 2} bytes the server sent before it aborted");
            }
        }, token);
        throw new WrongBytesException($"GET /abort size={size}: the body completed although the server aborted after half");
    }

    /// <summary>A handler whose connections record their client port in <paramref name="session"/> (what a fault names).</summary>
    private static SocketsHttpHandler CreateHandler(Session session) => new()
    {
        ConnectCallback = async (context, ct) =>
        {
            var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
            try
            {
                await socket.ConnectAsync(context.DnsEndPoint, ct);
            }
            catch
            {
                socket.Dispose();
                throw;
            }

            session.Used(((IPEndPoint)socket.LocalEndPoint!).Port);
            return new NetworkStream(socket, ownsSocket: true);
        },
    };

    private async Task Http2Async(Session session, Random random, CancellationToken token)
    {
        using SocketsHttpHandler handler = CreateHandler(session);
        using var client = new HttpClient(handler)
        {
            BaseAddress = new Uri($"http://127.0.0.1:{http2Port}"),
            DefaultRequestVersion = HttpVersion.Version20,
            DefaultVersionPolicy = HttpVersionPolicy.RequestVersionExact,
            Timeout = Timeout.InfiniteTimeSpan,
        };
        var streams = new List<Task>();
        int count = random.Next(2, 7);
        for (int i = 0; i < count; i++)
        {
            long key = NextKey();
            int size = random.Next(0, 200_000);
            bool echo = random.Next(0, 2) == 0;
            streams.Add(Task.Run(async () =>
            {
                HttpResponseMessage response;
                if (echo)
                {
                    var body = new byte[size];
                    Pattern.Fill(key, 0, body);
                    response = await client.PostAsync("/echo", new ByteArrayContent(body), token);
                }
                else
                {
                    response = await client.GetAsync($"/bytes?size={size}&key={key}", HttpCompletionOption.ResponseHeadersRead, token);
                }

                using (response)
                {
                    Expect(response.IsSuccessStatusCode && response.Version == HttpVersion.Version20, $"HTTP/2 {(echo ? "echo" : "bytes")}: {(int)response.StatusCode} {response.Version}");
                    await using Stream stream = await response.Content.ReadAsStreamAsync(token);
                    var buffer = new byte[32 * 1024];
                    long offset = 0;
                    int n;
                    while ((n = await stream.ReadAsync(buffer, token)) > 0)
                    {
                        CheckPattern(key, offset, buffer.AsSpan(0, n), "HTTP/2");
                        offset += n;
                    }

                    Expect(offset == size, $"HTTP/2 body of {offset} bytes, {size} expected");
                }
            }, token));
        }

        await Task.WhenAll(streams);
    }

    private async Task WebSocketAsync(Session session, Random random, CancellationToken token)
    {
        using SocketsHttpHandler handler = CreateHandler(session);
        using var invoker = new HttpMessageInvoker(handler);
        using var socket = new ClientWebSocket();
        await socket.ConnectAsync(new Uri($"ws://127.0.0.1:{http1Port}/ws"), invoker, token);
        var received = new byte[256 * 1024];
        int messages = random.Next(1, 8);
        for (int i = 0; i < messages; i++)
        {
            long key = NextKey();
            var message = new byte[random.Next(1, 100_000)];
            Pattern.Fill(key, 0, message);
            await socket.SendAsync(message, WebSocketMessageType.Binary, true, token);
            int length = 0;
            ValueWebSocketReceiveResult result;
            do
            {
                result = await socket.ReceiveAsync(received.AsMemory(length), token);
                length += result.Count;
            }
            while (!result.EndOfMessage);

            Expect(length == message.Length, $"WebSocket echo of {length} bytes, {message.Length} sent");
            CheckPattern(key, 0, received.AsSpan(0, length), "WebSocket");
        }

        await socket.CloseAsync(WebSocketCloseStatus.NormalClosure, null, token);
    }

    private static void CheckPattern(long key, long offset, ReadOnlySpan<byte> data, string what)
    {
        long bad = Pattern.FirstMismatch(key, offset, data);
        if (bad >= 0)
        {
            throw new WrongBytesException($"{what} key={key}: wrong byte at offset {bad}");
        }
    }

    private static void Expect(bool condition, string message)
    {
        if (!condition)
        {
            throw new WrongBytesException(message);
        }
    }

    private sealed class StopReading : Exception;
}

/// <summary>The kernel's view of loopback connections (/proc/net/tcp), for the message of a session that hung.</summary>
internal static class TcpTable
{
    public static string Describe(IEnumerable<int> ports)
    {
        if (!File.Exists("/proc/net/tcp"))
        {
            return "(no /proc/net/tcp here)";
        }

        var lines = File.ReadAllLines("/proc/net/tcp").Skip(1).Select(l => l.Split(' ', StringSplitOptions.RemoveEmptyEntries)).ToArray();
        var found = new List<string>();
        foreach (int port in ports)
        {
            string hex = ":" + port.ToString("X4", CultureInfo.InvariantCulture);
            foreach (string[] f in lines)
            {
                if (f[1].EndsWith(hex, StringComparison.Ordinal) || f[2].EndsWith(hex, StringComparison.Ordinal))
                {
                    // local remote state tx:rx inode
                    found.Add($"[{f[1]} {f[2]} st={f[3]} q={f[4]} inode={f[9]}]");
                }
            }
        }

        return string.Join(" ", found);
    }
}
