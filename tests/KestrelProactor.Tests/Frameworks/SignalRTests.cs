using System.Runtime.CompilerServices;
using System.Threading.Channels;
using KestrelProactor.Tests.Infrastructure;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http.Connections;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.AspNetCore.SignalR;
using Microsoft.AspNetCore.SignalR.Client;
using Microsoft.Extensions.DependencyInjection;

namespace KestrelProactor.Tests.Frameworks;

/// <summary>
/// SignalR on the transport under test, over each of its transports (WebSockets, server-sent events, long polling):
/// invocations, pushes from the server, streams both ways, and the server ending the connection.
/// </summary>
public sealed class SignalRTests
{
    public static TheoryData<TransportKind, TransportEndpoint, HttpTransportType> Cases
    {
        get
        {
            var data = new TheoryData<TransportKind, TransportEndpoint, HttpTransportType>();
            foreach ((TransportKind kind, TransportEndpoint endpoint) in TransportMatrix.Cases)
            {
                foreach (HttpTransportType transport in (HttpTransportType[])[HttpTransportType.WebSockets, HttpTransportType.ServerSentEvents, HttpTransportType.LongPolling])
                {
                    data.Add(kind, endpoint, transport);
                }
            }

            return data;
        }
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public async Task Hub_InvokesPushesStreamsAndEnds(TransportKind kind, TransportEndpoint endpoint, HttpTransportType transport)
    {
        await using FrameworkHost host = await FrameworkHost.StartAsync(
            kind,
            endpoint,
            HttpProtocols.Http1AndHttp2,
            services => services.AddSignalR(o => o.MaximumReceiveMessageSize = 1024 * 1024),
            app => app.MapHub<EchoHub>("/hub"));
        HubConnection connection = new HubConnectionBuilder()
            .WithUrl(new Uri(host.BaseAddress, "/hub"), options =>
            {
                options.Transports = transport;
                options.SkipNegotiation = transport == HttpTransportType.WebSockets;
                options.HttpMessageHandlerFactory = _ => host.CreateHandler();
                options.WebSocketFactory = (context, cancellationToken) => new ValueTask<System.Net.WebSockets.WebSocket>(host.ConnectWebSocketAsync(context.Uri, cancellationToken));
            })
            .Build();
        await using (connection)
        {
            var pushed = Channel.CreateUnbounded<string>();
            connection.On<string>("Pushed", message => pushed.Writer.TryWrite(message));
            var closed = new TaskCompletionSource<Exception?>(TaskCreationOptions.RunContinuationsAsynchronously);
            connection.Closed += error =>
            {
                closed.TrySetResult(error);
                return Task.CompletedTask;
            };
            await connection.StartAsync().LongTimeout();

            // Invocations, small and large (a large message spans many receives and sends).
            Assert.Equal("hello", await connection.InvokeAsync<string>(nameof(EchoHub.Echo), "hello").LongTimeout());
            string large = new('x', 200_000);
            Assert.Equal(large, await connection.InvokeAsync<string>(nameof(EchoHub.Echo), large).LongTimeout());

            // Pushes the server sends on its own, in order.
            await connection.InvokeAsync(nameof(EchoHub.PushToCaller), 20).LongTimeout();
            for (int i = 0; i < 20; i++)
            {
                Assert.Equal($"push {i}", await pushed.Reader.ReadAsync().AsTask().LongTimeout());
            }

            // A stream from the server, and one to it.
            int expected = 0;
            await foreach (int value in connection.StreamAsync<int>(nameof(EchoHub.Count), 500).WithCancellation(TestContext.Current.CancellationToken))
            {
                Assert.Equal(expected++, value);
            }

            Assert.Equal(500, expected);
            long sum = await connection.InvokeAsync<long>(nameof(EchoHub.Sum), Numbers(300)).LongTimeout();
            Assert.Equal(300L * 299 / 2, sum);

            // The server ends the connection: the client sees it closed.
            await connection.SendAsync(nameof(EchoHub.Leave)).LongTimeout();
            await closed.Task.LongTimeout();
            Assert.Equal(HubConnectionState.Disconnected, connection.State);
        }
    }

    private static async IAsyncEnumerable<int> Numbers(int count, [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        for (int i = 0; i < count; i++)
        {
            cancellationToken.ThrowIfCancellationRequested();
            yield return i;
            if (i % 50 == 0)
            {
                await Task.Yield();
            }
        }
    }
}

internal sealed class EchoHub : Hub
{
    public string Echo(string message) => message;

    public async Task PushToCaller(int count)
    {
        for (int i = 0; i < count; i++)
        {
            await Clients.Caller.SendAsync("Pushed", $"push {i}");
        }
    }

    public async IAsyncEnumerable<int> Count(int count, [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        for (int i = 0; i < count; i++)
        {
            cancellationToken.ThrowIfCancellationRequested();
            yield return i;
            if (i % 100 == 0)
            {
                await Task.Yield();
            }
        }
    }

    public async Task<long> Sum(IAsyncEnumerable<int> values)
    {
        long sum = 0;
        await foreach (int value in values)
        {
            sum += value;
        }

        return sum;
    }

    public void Leave() => Context.Abort();
}
