using System.Buffers;
using System.IO.Pipelines;
using System.Net;
using System.Net.Sockets;
using KestrelProactor.Tests.Infrastructure;
using KestrelProactor.Tests.Pipes;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;

namespace KestrelProactor.Tests.Receive;

/// <summary>
/// Real Kestrel on one transport kind, with a counting memory pool for every pipe (Kestrel's own included) and each
/// connection's input observed (see <see cref="ObservingPipeReader"/>). Endpoints: <c>GET /</c> answers "ok";
/// <c>POST /verify/{seed}</c> checks every byte of the body against the pattern; <c>POST /cancel-then-read</c> has its
/// body read canceled before any body byte arrives, then reads the body.
/// </summary>
internal sealed class ReceiveServer : IAsyncDisposable
{
    private readonly WebApplication _app;

    private ReceiveServer(WebApplication app, TransportKind kind, CountingMemoryPool pool)
    {
        _app = app;
        Kind = kind;
        Pool = pool;
    }

    public TransportKind Kind { get; }

    public CountingMemoryPool Pool { get; }

    private readonly System.Threading.Channels.Channel<ReadProgress> _connections = System.Threading.Channels.Channel.CreateUnbounded<ReadProgress>();

    /// <summary>The /cancel-then-read handler has seen its canceled read and waits for <see cref="ContinueCancelledRead"/>.</summary>
    public TaskCompletionSource CancelledReadSeen { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public TaskCompletionSource ContinueCancelledRead { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public int Port { get; private set; }

    public ProactorTransportFactory? Factory => _app.Services.GetServices<IConnectionListenerFactory>().OfType<ProactorTransportFactory>().SingleOrDefault();

    /// <summary>Receive buffers lent to the application right now, over every dispatcher (0 for the socket transport).</summary>
    public long LentBuffers => Factory?.Backend?.Dispatchers.Sum(d => d.ReceiveBuffersLent) ?? 0;

    public static async Task<ReceiveServer> StartAsync(TransportKind kind, Action<ProactorTransportOptions>? configure = null)
    {
        var pool = new CountingMemoryPool();
        WebApplicationBuilder builder = WebApplication.CreateSlimBuilder();
        ReceiveServer? server = null;
        builder.WebHost.UseKestrel(k =>
        {
            k.Limits.MaxRequestBodySize = null;
            k.Limits.MinRequestBodyDataRate = null;
            k.Limits.RequestHeadersTimeout = TimeSpan.FromMinutes(2);
            k.Listen(IPAddress.Loopback, 0, listen => listen.Use(next => connection =>
            {
                var progress = new ReadProgress();
                server!._connections.Writer.TryWrite(progress);
                connection.Transport = new ObservedPipe(new ObservingPipeReader(connection.Transport.Input, progress), connection.Transport.Output);
                return next(connection);
            }));
        });
        if (kind != TransportKind.Sockets)
        {
            builder.WebHost.UseProactorTransport(o => TransportFactories.Configure(kind, o, configure));
        }

        // Last, so that it wins over Kestrel's: every pool of the server (the transport's, Kestrel's own) is this one.
        builder.Services.AddSingleton<IMemoryPoolFactory<byte>>(pool);
        WebApplication app = builder.Build();
        server = new ReceiveServer(app, kind, pool);
        app.MapGet("/", () => "ok");
        app.MapPost("/verify/{seed:int}", VerifyAsync);
        app.MapPost("/cancel-then-read", server.CancelThenReadAsync);
        await app.StartAsync().LongTimeout();
        server.Port = new Uri(app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First()).Port;
        return server;
    }

    /// <summary>Connects a client (TCP_NODELAY: each send is a segment of its own) and returns what the server reads of it.</summary>
    public async Task<(Socket Client, ReadProgress Progress)> ConnectAsync()
    {
        var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        await socket.ConnectAsync(new IPEndPoint(IPAddress.Loopback, Port)).DefaultTimeout();
        // Kestrel runs the connection middleware once it has taken the connection, after the connect returns.
        ReadProgress progress = await _connections.Reader.ReadAsync().AsTask().DefaultTimeout();
        return (socket, progress);
    }

    public async ValueTask DisposeAsync()
    {
        await _app.StopAsync().LongTimeout();
        await _app.DisposeAsync();
    }

    private static async Task<string> VerifyAsync(int seed, HttpRequest request)
    {
        long index = 0;
        PipeReader body = request.BodyReader;
        while (true)
        {
            ReadResult result = await body.ReadAsync();
            foreach (ReadOnlyMemory<byte> memory in result.Buffer)
            {
                for (int i = 0; i < memory.Length; i++, index++)
                {
                    if (memory.Span[i] != StreamPattern.Byte(index, seed))
                    {
                        return $"mismatch at {index}";
                    }
                }
            }

            body.AdvanceTo(result.Buffer.End);
            if (result.IsCompleted)
            {
                return $"match {index}";
            }
        }
    }

    private async Task<string> CancelThenReadAsync(HttpRequest request)
    {
        PipeReader body = request.BodyReader;
        ValueTask<ReadResult> pending = body.ReadAsync();
        body.CancelPendingRead();
        ReadResult cancelled = await pending;
        CancelledReadSeen.TrySetResult();
        await ContinueCancelledRead.Task;
        // What Kestrel itself does after a canceled read: bytes may have arrived since the empty result was made.
        body.AdvanceTo(cancelled.Buffer.Start, cancelled.Buffer.End);
        long total = 0;
        while (true)
        {
            ReadResult result = await body.ReadAsync();
            total += result.Buffer.Length;
            body.AdvanceTo(result.Buffer.End);
            if (result.IsCompleted)
            {
                return $"canceled={cancelled.IsCanceled} read {total}";
            }
        }
    }

    private sealed class ObservedPipe(PipeReader input, PipeWriter output) : IDuplexPipe
    {
        public PipeReader Input { get; } = input;

        public PipeWriter Output { get; } = output;
    }
}
