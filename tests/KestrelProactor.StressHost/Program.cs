// A server on the proactor transport for the soak scripts and the descriptor-exhaustion test. Arguments:
//   --port N              listen on 127.0.0.1:N (0: any free port)
//   --kind K              proactor | inline | singleshot
//   --nofile N            lower the soft RLIMIT_NOFILE to N before binding (an io_uring accept takes the limit in
//                         force when it is submitted, so a multishot accept armed earlier would never see a lower one)
//   --stop-on-stdin-eof   stop when standard input closes (for a parent process); otherwise stop on SIGTERM/SIGINT
// Prints "STRESSHOST READY url=<url> pid=<pid> backend=<b> nofile=<limit> fds=<open>" once it serves. Endpoints: /plaintext, POST /echo,
// POST /upload (discards, answers the length), /download?size=N, /stats (JSON: transport gauges, RSS, descriptors, threads).
using System.Net;
using System.Runtime.InteropServices;
using KestrelProactor;
using KestrelProactor.StressHost;
using Microsoft.AspNetCore.Connections;

int port = 0;
string kind = "proactor";
ulong nofile = 0;
bool stopOnStdinEof = false;
for (int i = 0; i < args.Length; i++)
{
    switch (args[i])
    {
        case "--port" when i + 1 < args.Length:
            port = int.Parse(args[++i], System.Globalization.CultureInfo.InvariantCulture);
            break;
        case "--kind" when i + 1 < args.Length:
            kind = args[++i];
            break;
        case "--nofile" when i + 1 < args.Length:
            nofile = ulong.Parse(args[++i], System.Globalization.CultureInfo.InvariantCulture);
            break;
        case "--stop-on-stdin-eof":
            stopOnStdinEof = true;
            break;
        default:
            Console.Error.WriteLine($"STRESSHOST unknown argument: {args[i]}");
            return 2;
    }
}

using var stats = new ProactorStats();
var builder = WebApplication.CreateSlimBuilder(Array.Empty<string>());
builder.Logging.ClearProviders();
builder.Logging.AddSimpleConsole(o => o.SingleLine = true);
builder.Logging.SetMinimumLevel(LogLevel.Warning);
builder.WebHost.UseKestrel(k =>
{
    k.Limits.MaxRequestBodySize = null;
    k.Listen(IPAddress.Loopback, port);
});
builder.WebHost.UseProactorTransport(o =>
{
    o.AllowSocketTransportFallback = false;
    o.UnsafePreferInlineScheduling = kind == "inline";
    o.DisableMultishot = kind == "singleshot";
});

var app = builder.Build();
long requests = 0;
app.Use((context, next) =>
{
    Interlocked.Increment(ref requests);
    return next(context);
});
app.MapGet("/plaintext", () => Results.Text("Hello, World!"));
app.MapPost("/echo", static async (HttpContext context) =>
{
    context.Response.ContentType = "application/octet-stream";
    await context.Request.Body.CopyToAsync(context.Response.Body, context.RequestAborted);
});
app.MapPost("/upload", static async (HttpContext context) =>
{
    long length = 0;
    var buffer = new byte[64 * 1024];
    int n;
    while ((n = await context.Request.Body.ReadAsync(buffer, context.RequestAborted)) > 0)
    {
        length += n;
    }

    return Results.Text(length.ToString(System.Globalization.CultureInfo.InvariantCulture));
});
app.MapGet("/download", static async (HttpContext context, long size) =>
{
    context.Response.ContentLength = size;
    var chunk = new byte[64 * 1024];
    for (long sent = 0; sent < size;)
    {
        int count = (int)Math.Min(chunk.Length, size - sent);
        await context.Response.Body.WriteAsync(chunk.AsMemory(0, count), context.RequestAborted);
        sent += count;
    }
});
app.MapGet("/stats", () =>
{
    var values = stats.Snapshot();
    return Results.Json(new Dictionary<string, object>
    {
        ["connections"] = values.GetValueOrDefault("kestrel.proactor.connections"),
        ["operations_in_flight"] = values.GetValueOrDefault("kestrel.proactor.operations_in_flight"),
        ["receive_buffers_lent"] = values.GetValueOrDefault("kestrel.proactor.receive_buffers_lent"),
        ["handler_faults"] = values.GetValueOrDefault("kestrel.proactor.handler_faults"),
        ["cq_overflows"] = values.GetValueOrDefault("kestrel.proactor.cq_overflows"),
        ["receive_buffers_exhausted"] = values.GetValueOrDefault("kestrel.proactor.receive_buffers_exhausted"),
        ["kestrel_active_connections"] = values.GetValueOrDefault("kestrel.active_connections"),
        ["requests"] = Interlocked.Read(ref requests),
        ["rss_bytes"] = Environment.WorkingSet,
        ["fds"] = Directory.GetFiles("/proc/self/fd").Length,
        ["threads"] = Directory.GetDirectories("/proc/self/task").Length,
    });
});

if (nofile != 0)
{
    Limits.SetSoftDescriptorLimit(nofile);
}

await app.StartAsync();
var factory = app.Services.GetServices<IConnectionListenerFactory>().OfType<ProactorTransportFactory>().Single();
string url = app.Urls.First();
// Serve a few requests before anything else: Kestrel loads assemblies on the first request (each load opens a
// file), and with a low descriptor limit that load would fail instead of the accept the limit is meant for.
await WarmUp.RequestAsync(new Uri(url), "/plaintext");
await WarmUp.RequestAsync(new Uri(url), "/stats");
int openDescriptors = Directory.GetFiles("/proc/self/fd").Length;
if (nofile != 0)
{
    // Each collection opens /proc/meminfo, and one that finds no descriptor free ends the process with "Out of
    // memory." (seen once in ten loaded runs of the exhaustion test despite the large gen0 budget the test sets).
    // No collection at all while the test holds the descriptors: a no-GC region far larger than it allocates.
    GC.Collect();
    GC.TryStartNoGCRegion(200L * 1024 * 1024);
}

Console.WriteLine($"STRESSHOST READY url={url} pid={Environment.ProcessId} backend={factory.ActiveBackend} nofile={nofile} fds={openDescriptors}");

if (stopOnStdinEof)
{
    var stdinClosed = Task.Run(() =>
    {
        using var stdin = Console.OpenStandardInput();
        var buffer = new byte[256];
        while (stdin.Read(buffer, 0, buffer.Length) > 0)
        {
        }
    });
    await Task.WhenAny(stdinClosed, Task.Delay(TimeSpan.FromMinutes(5)));
    await app.StopAsync(new CancellationTokenSource(TimeSpan.FromSeconds(5)).Token);
}
else
{
    await app.WaitForShutdownAsync();
}

await app.DisposeAsync();
return 0;

internal static class WarmUp
{
    public static async Task RequestAsync(Uri baseAddress, string path)
    {
        using var socket = new System.Net.Sockets.Socket(System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Tcp);
        await socket.ConnectAsync(IPAddress.Loopback, baseAddress.Port);
        await socket.SendAsync(System.Text.Encoding.ASCII.GetBytes($"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"));
        var buffer = new byte[4096];
        while (await socket.ReceiveAsync(buffer) > 0)
        {
        }
    }
}

internal static partial class Limits
{
    private const int RLIMIT_NOFILE = 7;

    public static void SetSoftDescriptorLimit(ulong soft)
    {
        if (getrlimit(RLIMIT_NOFILE, out RLimit limit) != 0)
        {
            throw new InvalidOperationException($"getrlimit failed: errno {Marshal.GetLastPInvokeError()}");
        }

        limit.Current = Math.Min(soft, limit.Maximum);
        if (setrlimit(RLIMIT_NOFILE, in limit) != 0)
        {
            throw new InvalidOperationException($"setrlimit failed: errno {Marshal.GetLastPInvokeError()}");
        }
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct RLimit
    {
        public ulong Current;
        public ulong Maximum;
    }

    [LibraryImport("libc", SetLastError = true)]
    private static partial int getrlimit(int resource, out RLimit limit);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int setrlimit(int resource, in RLimit limit);
}
