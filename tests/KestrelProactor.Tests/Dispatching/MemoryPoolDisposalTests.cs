using System.Net;
using System.Net.Sockets;
using System.Text;
using KestrelProactor.Tests.Infrastructure;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Logging;

namespace KestrelProactor.Tests.Dispatching;

/// <summary>
/// The pools the transport takes from Kestrel's <see cref="IMemoryPoolFactory{T}"/> are the transport's to dispose,
/// as Kestrel's own transport tests expect: each once nothing can use it any more, never under a block still out.
/// The Windows project links this file.
/// </summary>
public sealed class MemoryPoolDisposalTests
{
    private const int MaxRequestBufferSize = 64 * 1024;

    public static TheoryData<TransportKind> Kinds => new(OperatingSystem.IsWindows()
        ? new[] { TransportKind.Proactor }
        : new[] { TransportKind.Proactor, TransportKind.ProactorBasicTier });

    [Theory]
    [MemberData(nameof(Kinds))]
    public async Task UploadPastMaxRequestBufferSize_ThenGracefulStop_EveryPoolIsDisposedWithEveryBlockBack(TransportKind kind)
    {
        var pools = new TrackingPoolFactory();
        WebApplication app = await StartAsync(kind, pools, web => web.MapPost("/upload", async (HttpContext c) =>
        {
            // Reads only after a pause, so the upload meets the input's back-pressure first.
            await Task.Delay(300);
            long total = 0;
            byte[] buffer = new byte[16 * 1024];
            int n;
            while ((n = await c.Request.Body.ReadAsync(buffer)) > 0)
            {
                total += n;
            }

            return total.ToString();
        }));
        try
        {
            using var http = new HttpClient { Timeout = TestTimeouts.Default };
            byte[] body = new byte[4 * 1024 * 1024];
            using HttpResponseMessage response = await http.PostAsync(Url(app) + "/upload", new ByteArrayContent(body)).DefaultTimeout();
            Assert.Equal(body.Length.ToString(), await response.Content.ReadAsStringAsync().DefaultTimeout());
        }
        finally
        {
            await app.StopAsync().DefaultTimeout();
            await app.DisposeAsync().AsTask().DefaultTimeout();
        }

        await AssertEveryTransportPoolDisposedCleanAsync(pools);
    }

    [Theory]
    [MemberData(nameof(Kinds))]
    public async Task HostStopsWhileTheApplicationStillHoldsAPausedUpload_PoolOutlivesTheHost_DisposedOnceTheConnectionIsDone(TransportKind kind)
    {
        // Kestrel's ServerShutsDownGracefullyWhenMaxRequestBufferSizeExceeded: the server stops (and is disposed)
        // while a request whose upload filled its input still runs; only after that handler returns is the
        // connection disposed, and only then may its dispatcher's pool go.
        var pools = new TrackingPoolFactory();
        var entered = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var handlerDone = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        WebApplication app = await StartAsync(kind, pools, web => web.MapPost("/held", async (HttpContext c) =>
        {
            entered.TrySetResult();
            try
            {
                await release.Task;
                await c.Request.Body.CopyToAsync(Stream.Null);
            }
            catch (Exception)
            {
                // The connection was aborted by the stop: reading the rest fails, as it does in Kestrel's test.
            }
            finally
            {
                handlerDone.TrySetResult();
            }
        }));
        using var client = new Socket(SocketType.Stream, ProtocolType.Tcp);
        try
        {
            await client.ConnectAsync(new IPEndPoint(IPAddress.Loopback, new Uri(Url(app)).Port)).DefaultTimeout();
            await client.SendAsync(Encoding.ASCII.GetBytes($"POST /held HTTP/1.1\r\nHost: x\r\nContent-Length: {100 * 1024 * 1024}\r\n\r\n")).DefaultTimeout();
            await entered.Task.DefaultTimeout();
            // More than the input holds: the transport pauses, the client's sends stall. Not awaited: it blocks.
            Task upload = Task.Run(async () =>
            {
                try
                {
                    await client.SendAsync(new byte[8 * MaxRequestBufferSize]);
                }
                catch (SocketException)
                {
                    // The stop's abort cut it.
                }
                catch (ObjectDisposedException)
                {
                }
            });

            // A stop that gives up at once on the request still running, then the host's disposal.
            using (var expired = new CancellationTokenSource())
            {
                expired.Cancel();
                await app.StopAsync(expired.Token).DefaultTimeout();
            }

            await app.DisposeAsync().AsTask().DefaultTimeout();

            // The handler still holds the connection's input: its pool must still be there.
            Assert.Contains(pools.Pools, p => !p.IsDisposed);
        }
        finally
        {
            release.TrySetResult();
        }

        await handlerDone.Task.DefaultTimeout();
        await AssertEveryTransportPoolDisposedCleanAsync(pools);
    }

    private static async Task AssertEveryTransportPoolDisposedCleanAsync(TrackingPoolFactory pools)
    {
        // Every pool taken from the factory: one per dispatcher (Kestrel takes none of its own here).
        IReadOnlyList<TrackingPoolFactory.Pool> transportPools = pools.Pools;
        Assert.Equal(2, transportPools.Count);
        Assert.All(transportPools, p => Assert.Equal("KestrelProactor", p.Owner));
        using var deadline = new CancellationTokenSource(TestTimeouts.Default);
        while (!transportPools.All(p => p.IsDisposed && p.Outstanding == 0))
        {
            Assert.False(deadline.IsCancellationRequested, "Not every pool was disposed with all its blocks back: " + string.Join("; ", transportPools));
            await Task.Delay(20);
        }

        Assert.All(transportPools, p =>
        {
            Assert.Equal(0, p.OutstandingAtDispose);
            Assert.Equal(0, p.RentedAfterDispose);
        });
    }

    private static string Url(WebApplication app) => app.Urls.First();

    private static async Task<WebApplication> StartAsync(TransportKind kind, TrackingPoolFactory pools, Action<WebApplication> map)
    {
        WebApplicationBuilder builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.WebHost.UseKestrel(k =>
        {
            k.Listen(IPAddress.Loopback, 0);
            k.Limits.MaxRequestBufferSize = MaxRequestBufferSize;
            k.Limits.MaxRequestBodySize = null;
            k.Limits.MinRequestBodyDataRate = null;
        });
        // Kestrel's transport tests pass MaxRequestBufferSize to the transport as its read buffer limit.
        builder.WebHost.UseProactorTransport(o => TransportFactories.Configure(kind, o, c => c.MaxReadBufferSize = MaxRequestBufferSize));
        // As Kestrel's tests do: the host's pool factory, which the transport takes its pools from (in place of the
        // one UseKestrel registers).
        builder.Services.RemoveAll<IMemoryPoolFactory<byte>>();
        builder.Services.AddSingleton<IMemoryPoolFactory<byte>>(pools);
        WebApplication app = builder.Build();
        map(app);
        await app.StartAsync().DefaultTimeout();
        return app;
    }
}
