using System.Collections.Concurrent;
using System.Diagnostics.Metrics;
using System.Net;
using System.Net.Sockets;
using System.Text;
using KestrelProactor.Tests.Infrastructure;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;

namespace KestrelProactor.Tests.Operations;

/// <summary>
/// Kestrel's own connection metrics are what dashboards already chart, so they must count the proactor's connections
/// exactly as they count the socket transport's: <c>kestrel.active_connections</c> up and back down, one
/// <c>kestrel.connection.duration</c> per connection, and the same tags (Kestrel derives the network ones from the
/// transport's endpoints; an error tag would mean the transport ended a clean close as a failure).
/// </summary>
public sealed class KestrelConnectionMetricsTests
{
    private const string KestrelMeter = "Microsoft.AspNetCore.Server.Kestrel";
    private const int Connections = 3;

    public static TheoryData<TransportKind> Kinds => new(TransportKind.Sockets, TransportKind.Proactor, TransportKind.ProactorBasicTier);

    [Theory]
    [MemberData(nameof(Kinds))]
    public async Task KestrelConnectionMetrics_CountEachConnectionOnceWithItsEndpointTags(TransportKind kind)
    {
        WebApplicationBuilder builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.WebHost.UseKestrel(k => k.Listen(IPAddress.Loopback, 0));
        if (kind != TransportKind.Sockets)
        {
            builder.WebHost.UseProactorTransport(o => TransportFactories.Configure(kind, o));
        }

        await using WebApplication app = builder.Build();
        app.MapGet("/", (HttpContext c) =>
        {
            // Content-Length framed, so the raw client reads one answer and keeps the connection.
            string backend = c.Features.Get<IProactorConnectionFeature>()?.Backend ?? "sockets";
            c.Response.ContentLength = backend.Length;
            return c.Response.WriteAsync(backend);
        });
        using var recorder = new KestrelConnectionRecorder(app.Services.GetRequiredService<IMeterFactory>());
        await app.StartAsync().DefaultTimeout();
        int port = new Uri(app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First()).Port;
        string expectedBackend = kind == TransportKind.Sockets ? "sockets" : TransportFactories.ExpectedBackend;

        var clients = new List<Socket>();
        try
        {
            for (int i = 0; i < Connections; i++)
            {
                var client = new Socket(SocketType.Stream, ProtocolType.Tcp);
                clients.Add(client);
                await client.ConnectAsync(new IPEndPoint(IPAddress.Loopback, port)).DefaultTimeout();
                Assert.EndsWith(expectedBackend, await GetAsync(client));
            }

            // Each connection has been served, so Kestrel has counted it as active.
            Assert.Equal(Connections, recorder.Active);
            Assert.Empty(recorder.Durations);
        }
        finally
        {
            foreach (Socket client in clients)
            {
                // A clean close (FIN): the server ends the connection without error.
                client.Shutdown(SocketShutdown.Send);
                client.Dispose();
            }
        }

        await WaitUntilAsync(() => recorder.Active == 0 && recorder.Durations.Count == Connections);
        await app.StopAsync().DefaultTimeout();

        var expectedTags = new Dictionary<string, string>
        {
            ["network.transport"] = "tcp",
            ["network.type"] = "ipv4",
            ["server.address"] = "127.0.0.1",
            ["server.port"] = port.ToString(),
        };
        Assert.All(recorder.ActiveTags, tags => Assert.Equal(expectedTags, tags));
        Assert.Equal(2 * Connections, recorder.ActiveTags.Count);
        Assert.All(recorder.Durations, d =>
        {
            Assert.True(d.Seconds > 0);
            Assert.Equal(
                new Dictionary<string, string>(expectedTags) { ["network.protocol.name"] = "http", ["network.protocol.version"] = "1.1" },
                d.Tags);
        });
    }

    private static async Task<string> GetAsync(Socket client)
    {
        await client.SendAsync(Encoding.ASCII.GetBytes("GET / HTTP/1.1\r\nHost: x\r\n\r\n")).DefaultTimeout();
        var buffer = new byte[4096];
        int filled = 0;
        while (true)
        {
            int n = await client.ReceiveAsync(buffer.AsMemory(filled)).DefaultTimeout();
            Assert.NotEqual(0, n);
            filled += n;
            string text = Encoding.ASCII.GetString(buffer, 0, filled);
            int headerEnd = text.IndexOf("\r\n\r\n", StringComparison.Ordinal);
            int lengthAt = text.IndexOf("Content-Length: ", StringComparison.OrdinalIgnoreCase);
            if (headerEnd > 0 && lengthAt > 0)
            {
                int length = int.Parse(text.AsSpan(lengthAt + 16, text.IndexOf('\r', lengthAt) - lengthAt - 16));
                if (filled >= headerEnd + 4 + length)
                {
                    return text.Substring(headerEnd + 4, length);
                }
            }
        }
    }

    private static async Task WaitUntilAsync(Func<bool> condition)
    {
        using var deadline = new CancellationTokenSource(TestTimeouts.Default);
        while (!condition())
        {
            await Task.Delay(20, deadline.Token);
        }
    }

    /// <summary>Listens to one host's Kestrel meter (its own meter factory), so other tests' hosts are not counted.</summary>
    private sealed class KestrelConnectionRecorder : IDisposable
    {
        private readonly MeterListener _listener = new();
        private readonly ConcurrentQueue<Dictionary<string, string>> _activeTags = new();
        private readonly ConcurrentQueue<(double Seconds, Dictionary<string, string> Tags)> _durations = new();
        private long _active;

        public KestrelConnectionRecorder(IMeterFactory scope)
        {
            _listener.InstrumentPublished = (instrument, listener) =>
            {
                if (instrument.Meter.Name == KestrelMeter && ReferenceEquals(instrument.Meter.Scope, scope) &&
                    instrument.Name is "kestrel.active_connections" or "kestrel.connection.duration")
                {
                    listener.EnableMeasurementEvents(instrument);
                }
            };
            _listener.SetMeasurementEventCallback<long>((_, delta, tags, _) =>
            {
                Interlocked.Add(ref _active, delta);
                _activeTags.Enqueue(ToDictionary(tags));
            });
            _listener.SetMeasurementEventCallback<double>((_, seconds, tags, _) => _durations.Enqueue((seconds, ToDictionary(tags))));
            _listener.Start();
        }

        public long Active => Volatile.Read(ref _active);

        public IReadOnlyList<Dictionary<string, string>> ActiveTags => [.. _activeTags];

        public IReadOnlyList<(double Seconds, Dictionary<string, string> Tags)> Durations => [.. _durations];

        public void Dispose() => _listener.Dispose();

        private static Dictionary<string, string> ToDictionary(ReadOnlySpan<KeyValuePair<string, object?>> tags)
        {
            var result = new Dictionary<string, string>();
            foreach (KeyValuePair<string, object?> tag in tags)
            {
                result[tag.Key] = tag.Value?.ToString() ?? "null";
            }

            return result;
        }
    }
}
