using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using System.Text;
using KestrelProactor.Tests.Contract;
using KestrelProactor.Tests.Infrastructure;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.AspNetCore.Server.Kestrel.Transport.Sockets;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace KestrelProactor.Tests.EndToEnd;

/// <summary>
/// Through real Kestrel: the ways Kestrel ends a connection reach the wire as they do on its socket transport. A client
/// that closed gracefully (HTTP/1.1 half-close after a request, HTTP/2 without active streams) gets FIN; a response
/// that does not satisfy the minimum data rate gets RST, or FIN with FIN-on-error.
/// </summary>
public sealed class FinParityTests
{
    private const int LargeResponseBytes = 64 * 1024 * 1024;

    [Theory]
    [MemberData(nameof(TransportFactories.All), MemberType = typeof(TransportFactories))]
    public async Task Http1_ClientHalfClosesAfterItsResponse_ReadsEndOfStreamNotReset(TransportKind kind)
    {
        // Kestrel reads the FIN between requests as "the client closed gracefully" and aborts without a reason. (A FIN
        // while Kestrel still reads the request body is an unexpected end of the body, a bad request that Kestrel
        // aborts with a reason: RST on either transport.)
        await using Host host = await Host.StartAsync(kind, finOnError: false);

        // Several times: Kestrel's abort and its own completion of the output race each other here.
        for (int i = 0; i < 10; i++)
        {
            using Socket client = await ConnectAsync(host.EndPoint);
            var http = new RawHttp(client);
            using var cts = new CancellationTokenSource(TestTimeouts.Default);
            await http.SendAsciiAsync("POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nhello", cts.Token);
            (string status, _, byte[] body) = await http.ReadResponseAsync(cts.Token);
            Assert.Equal("HTTP/1.1 200 OK", status);
            Assert.Equal("hello"u8.ToArray(), body);

            // Act
            client.Shutdown(SocketShutdown.Send);

            // Assert: end-of-stream (ReceiveToEndAsync throws on RST).
            Exception? error = await Record.ExceptionAsync(() => RawClient.ReceiveToEndAsync(client));
            Assert.True(error is null, $"Attempt {i}: {error?.Message}; events: {string.Join(", ", host.Events.Select(e => e.Name))}");
        }

        Assert.DoesNotContain(host.Events, e => e.Name == "ConnectionWriteRst");
    }

    [Theory]
    [MemberData(nameof(TransportFactories.All), MemberType = typeof(TransportFactories))]
    public async Task Http1_ClientHalfClosesAfterPostWhileItsRequestRuns_ReadsEndOfStreamNotReset(TransportKind kind)
    {
        // The application has read the whole body and is still running when the client's FIN arrives: Kestrel takes it
        // as "the client closed gracefully", aborts without a reason, and the request's RequestAborted fires.
        await using Host host = await Host.StartAsync(kind, finOnError: false);
        for (int i = 0; i < 5; i++)
        {
            using Socket client = await ConnectAsync(host.EndPoint);
            await RawClient.SendAllAsync(client, Encoding.ASCII.GetBytes("POST /hold HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nhello"));
            Assert.True(await host.BodiesRead.WaitAsync(TestTimeouts.Default, TestContext.Current.CancellationToken), "/hold did not read its body.");

            // Act
            client.Shutdown(SocketShutdown.Send);

            // Assert: end-of-stream, no response (the socket transport drops it too), and the request saw the abort.
            Exception? error = await Record.ExceptionAsync(() => RawClient.ReceiveToEndAsync(client));
            Assert.True(error is null, $"Attempt {i}: {error?.Message}; events: {string.Join(", ", host.Events.Select(e => e.Name))}");
            Assert.True(await host.RequestsAborted.WaitAsync(TestTimeouts.Default, TestContext.Current.CancellationToken), "RequestAborted did not fire.");
        }

        Assert.DoesNotContain(host.Events, e => e.Name == "ConnectionWriteRst");
    }

    [Theory]
    [MemberData(nameof(TransportFactories.All), MemberType = typeof(TransportFactories))]
    public async Task Http2_ClientClosesWithoutActiveStreams_GetsFinAndWriteFinIsLogged(TransportKind kind)
    {
        await using Host host = await Host.StartAsync(kind, finOnError: false, protocols: HttpProtocols.Http2);
        using Socket client = await ConnectAsync(host.EndPoint);

        // The client preface and an empty SETTINGS frame; then the server's SETTINGS arrive (a frame header at least).
        byte[] preface = [.. "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"u8, 0, 0, 0, 4, 0, 0, 0, 0, 0];
        await RawClient.SendAllAsync(client, preface);
        byte[] serverSettings = await RawClient.ReceiveExactlyAsync(client, 9);
        Assert.Equal(4, serverSettings[3]);

        // Act: the client ends its side with no stream open.
        client.Shutdown(SocketShutdown.Send);

        // Assert
        Exception? error = await Record.ExceptionAsync(() => RawClient.ReceiveToEndAsync(client));
        Assert.Null(error);
        await host.WaitForEventAsync("ConnectionWriteFin");
        Assert.DoesNotContain(host.Events, e => e.Name == "ConnectionWriteRst");
    }

    [Theory]
    [MemberData(nameof(ContractTransports.KindsAndBooleans), MemberType = typeof(ContractTransports))]
    public async Task ResponseBelowMinimumDataRate_ConnectionEndsWithRstOrWithFinOnErrorFin(TransportKind kind, bool finOnError)
    {
        Assert.SkipWhen(TestHost.IsWine && !finOnError, TestHost.WineResetBeforeReceive);
        // Arrange: a rate no client that does not read can satisfy, checked after two seconds of grace (the least allowed).
        await using Host host = await Host.StartAsync(kind, finOnError, kestrel: k =>
            k.Limits.MinResponseDataRate = new MinDataRate(bytesPerSecond: 1024 * 1024, gracePeriod: TimeSpan.FromSeconds(2)));
        using Socket client = await ConnectAsync(host.EndPoint, receiveBufferSize: 16 * 1024);
        await RawClient.SendAllAsync(client, Encoding.ASCII.GetBytes("GET /large HTTP/1.1\r\nHost: localhost\r\n\r\n"));

        // Act: the client reads nothing until Kestrel has given up on the response and the transport has ended it.
        await host.WaitForEventAsync("ResponseMinimumDataRateNotSatisfied", TestTimeouts.Long);
        await host.WaitForEventAsync(finOnError ? "ConnectionWriteFin" : "ConnectionWriteRst");
        long received = 0;
        Exception? error = await Record.ExceptionAsync(async () => received = (await RawClient.ReceiveToEndAsync(client).LongTimeout()).Length);

        // Assert
        Assert.DoesNotContain(host.Events, e => e.Name == (finOnError ? "ConnectionWriteRst" : "ConnectionWriteFin"));
        if (finOnError)
        {
            Assert.Null(error);
            Assert.InRange(received, 1, LargeResponseBytes - 1);
        }
        else
        {
            Assert.Equal(SocketError.ConnectionReset, Assert.IsType<SocketException>(error).SocketErrorCode);
        }
    }

    private static async Task<Socket> ConnectAsync(IPEndPoint endPoint, int? receiveBufferSize = null)
    {
        var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        if (receiveBufferSize is int size)
        {
            socket.ReceiveBufferSize = size;
        }

        await socket.ConnectAsync(endPoint).DefaultTimeout();
        return socket;
    }

    /// <summary>Kestrel on the transport under test, with every log event's name recorded.</summary>
    private sealed class Host : IAsyncDisposable
    {
        private readonly WebApplication _app;
        private readonly EventRecorder _events;

        private Host(WebApplication app, EventRecorder events, IPEndPoint endPoint, SemaphoreSlim bodiesRead, SemaphoreSlim requestsAborted)
        {
            _app = app;
            _events = events;
            EndPoint = endPoint;
            BodiesRead = bodiesRead;
            RequestsAborted = requestsAborted;
        }

        public IPEndPoint EndPoint { get; }

        /// <summary>Released each time /hold has read its whole request body.</summary>
        public SemaphoreSlim BodiesRead { get; }

        /// <summary>Released each time /hold saw its request aborted.</summary>
        public SemaphoreSlim RequestsAborted { get; }

        public IReadOnlyCollection<(string Category, string Name)> Events => _events.Entries;

        public static async Task<Host> StartAsync(TransportKind kind, bool finOnError, HttpProtocols protocols = HttpProtocols.Http1, Action<KestrelServerOptions>? kestrel = null)
        {
            var events = new EventRecorder();
            WebApplicationBuilder builder = WebApplication.CreateSlimBuilder();
            builder.Logging.ClearProviders();
            builder.Logging.AddProvider(events);
            // A rule for this provider outranks the levels in the output directory's appsettings.json.
            builder.Logging.AddFilter<EventRecorder>(category: null, LogLevel.Trace);
            builder.WebHost.UseKestrel(options =>
            {
                kestrel?.Invoke(options);
                options.Listen(IPAddress.Loopback, 0, listen => listen.Protocols = protocols);
            });
            if (kind == TransportKind.Sockets)
            {
                builder.Services.Configure<SocketTransportOptions>(o =>
                {
                    if (finOnError)
                    {
                        ContractTransports.SetSocketTransportFinOnError(o);
                    }
                });
            }
            else
            {
                builder.WebHost.UseProactorTransport(o => TransportFactories.Configure(kind, o, p => p.FinOnError = finOnError));
            }

            WebApplication app = builder.Build();
            var bodiesRead = new SemaphoreSlim(0);
            var requestsAborted = new SemaphoreSlim(0);
            app.MapPost("/echo", async (HttpContext context) =>
            {
                using var body = new MemoryStream();
                await context.Request.Body.CopyToAsync(body);
                await context.Response.Body.WriteAsync(body.ToArray());
            });
            app.MapPost("/hold", async (HttpContext context) =>
            {
                using var body = new MemoryStream();
                await context.Request.Body.CopyToAsync(body);
                bodiesRead.Release();
                try
                {
                    await Task.Delay(TestTimeouts.Long, context.RequestAborted);
                }
                catch (OperationCanceledException)
                {
                    requestsAborted.Release();
                }
            });
            app.MapGet("/large", async (HttpContext context) =>
            {
                byte[] chunk = new byte[64 * 1024];
                try
                {
                    for (int sent = 0; sent < LargeResponseBytes; sent += chunk.Length)
                    {
                        await context.Response.Body.WriteAsync(chunk, context.RequestAborted);
                    }
                }
                catch (Exception ex) when (ex is OperationCanceledException or IOException)
                {
                    // Kestrel gave up on the response: the point of the test.
                }
            });

            await app.StartAsync().LongTimeout();
            var address = new Uri(app.Urls.First());
            return new Host(app, events, new IPEndPoint(IPAddress.Loopback, address.Port), bodiesRead, requestsAborted);
        }

        public Task WaitForEventAsync(string name, TimeSpan? timeout = null) => _events.WaitForAsync(name, timeout ?? TestTimeouts.Default);

        public async ValueTask DisposeAsync()
        {
            using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(5));
            await _app.StopAsync(cts.Token).WaitAsync(TestTimeouts.Default);
            await _app.DisposeAsync().AsTask().DefaultTimeout();
        }
    }

    /// <summary>Every event's name, whatever its category and level; waits for a name to appear.</summary>
    private sealed class EventRecorder : ILoggerProvider
    {
        private readonly ConcurrentQueue<(string Category, string Name)> _entries = new();
        private readonly SemaphoreSlim _logged = new(0);

        public IReadOnlyCollection<(string Category, string Name)> Entries => [.. _entries];

        public ILogger CreateLogger(string categoryName) => new Logger(this, categoryName);

        public async Task WaitForAsync(string name, TimeSpan timeout)
        {
            using var cts = new CancellationTokenSource(timeout);
            while (!_entries.Any(e => e.Name == name))
            {
                try
                {
                    await _logged.WaitAsync(cts.Token);
                }
                catch (OperationCanceledException)
                {
                    Assert.Fail($"No {name} event within {timeout}; logged: {string.Join(", ", _entries.Select(e => e.Name).Distinct())}.");
                }
            }
        }

        public void Dispose()
        {
        }

        private sealed class Logger(EventRecorder owner, string category) : ILogger
        {
            public IDisposable? BeginScope<TState>(TState state)
                where TState : notnull => null;

            public bool IsEnabled(LogLevel logLevel) => true;

            public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
            {
                if (eventId.Name is { } name)
                {
                    owner._entries.Enqueue((category, name));
                    owner._logged.Release();
                }
            }
        }
    }
}
