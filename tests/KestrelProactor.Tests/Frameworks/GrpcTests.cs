using System.Collections.Concurrent;
using System.Security.Cryptography;
using Google.Protobuf;
using Grpc.Core;
using Grpc.Net.Client;
using KestrelProactor.Tests.EndToEnd;
using KestrelProactor.Tests.Frameworks.Rpc;
using KestrelProactor.Tests.Infrastructure;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;

namespace KestrelProactor.Tests.Frameworks;

/// <summary>
/// gRPC (HTTP/2 with prior knowledge, trailers, stream resets) on the transport under test, against the same calls on
/// the socket transport: every call kind with its bytes checked, a status from the server, a deadline and a
/// cancellation that must reach the server's handler, and the connection still serving afterwards.
/// </summary>
public sealed class GrpcTests
{
    [Theory]
    [MemberData(nameof(TransportMatrix.All), MemberType = typeof(TransportMatrix))]
    public async Task EveryCallKind_BytesIntact(TransportKind kind, TransportEndpoint endpoint)
    {
        await using FrameworkHost host = await StartAsync(kind, endpoint);
        await EveryCallKindAsync(host);
    }

    /// <summary>HTTP/2 chosen by ALPN over TLS, where a 16 KiB record and a 16 KiB frame straddle each other.</summary>
    [Theory]
    [MemberData(nameof(TransportMatrix.Presets), MemberType = typeof(TransportMatrix))]
    public async Task EveryCallKind_OverTls_BytesIntact(TransportKind kind)
    {
        Assert.SkipWhen(TestHost.IsWine, TestHost.WineNoCngEcdsa);
        await using FrameworkHost host = await StartAsync(kind, TransportEndpoint.Tcp, tls: true);
        Assert.Equal(Uri.UriSchemeHttps, host.BaseAddress.Scheme);
        await EveryCallKindAsync(host);
    }

    private static async Task EveryCallKindAsync(FrameworkHost host)
    {
        using GrpcChannel channel = CreateChannel(host);
        var client = new Echo.EchoClient(channel);

        // Unary, 1 MiB each way.
        byte[] large = PatternData.Create(1024 * 1024, seed: 1);
        Chunk echoed = await client.UnaryAsync(new Chunk { Data = ByteString.CopyFrom(large), Index = 7 }).ResponseAsync.LongTimeout();
        Assert.Equal(7, echoed.Index);
        Assert.True(echoed.Data.Span.SequenceEqual(large), "The unary echo differs.");

        // Server streaming: 200 messages of 16 KiB, in order.
        using (AsyncServerStreamingCall<Chunk> stream = client.ServerStream(new StreamRequest { Count = 200, Size = 16 * 1024 }))
        {
            int expected = 0;
            while (await stream.ResponseStream.MoveNext(CancellationToken.None).LongTimeout())
            {
                Chunk chunk = stream.ResponseStream.Current;
                Assert.Equal(expected, chunk.Index);
                Assert.True(chunk.Data.Span.SequenceEqual(EchoService.ChunkData(expected, 16 * 1024)), $"Streamed message {expected} differs.");
                expected++;
            }

            Assert.Equal(200, expected);
            Assert.Equal(StatusCode.OK, stream.GetStatus().StatusCode);
        }

        // Client streaming: 100 messages of 64 KiB, hashed in order by the server.
        using (AsyncClientStreamingCall<Chunk, Digest> upload = client.ClientStream())
        {
            using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
            for (int i = 0; i < 100; i++)
            {
                byte[] data = PatternData.Create(64 * 1024, seed: 100 + i);
                hash.AppendData(data);
                await upload.RequestStream.WriteAsync(new Chunk { Data = ByteString.CopyFrom(data), Index = i }).LongTimeout();
            }

            await upload.RequestStream.CompleteAsync().LongTimeout();
            Digest digest = await upload.ResponseAsync.LongTimeout();
            Assert.Equal(100, digest.Count);
            Assert.Equal(100L * 64 * 1024, digest.Length);
            Assert.Equal(Convert.ToHexString(hash.GetHashAndReset()), digest.Sha256);
        }

        // Duplex: each message answered before the next is sent, sizes across HTTP/2 frame and window edges.
        using (AsyncDuplexStreamingCall<Chunk, Chunk> duplex = client.Duplex())
        {
            int[] sizes = [0, 1, 16_383, 16_384, 16_385, 65_535, 65_536, 200_000];
            for (int i = 0; i < sizes.Length; i++)
            {
                byte[] data = PatternData.Create(sizes[i], seed: 1000 + i);
                await duplex.RequestStream.WriteAsync(new Chunk { Data = ByteString.CopyFrom(data), Index = i }).LongTimeout();
                Assert.True(await duplex.ResponseStream.MoveNext(CancellationToken.None).LongTimeout(), $"The duplex call ended before message {i}.");
                Assert.Equal(i, duplex.ResponseStream.Current.Index);
                Assert.True(duplex.ResponseStream.Current.Data.Span.SequenceEqual(data), $"Duplex message {i} ({sizes[i]} bytes) differs.");
            }

            await duplex.RequestStream.CompleteAsync().LongTimeout();
            Assert.False(await duplex.ResponseStream.MoveNext(CancellationToken.None).LongTimeout());
            Assert.Equal(StatusCode.OK, duplex.GetStatus().StatusCode);
        }

        // Many calls at once over the one connection.
        Chunk[] answers = await Task.WhenAll(Enumerable.Range(0, 64).Select(i =>
            client.UnaryAsync(new Chunk { Data = ByteString.CopyFrom(PatternData.Create(i * 100, seed: i)), Index = i }).ResponseAsync)).LongTimeout();
        for (int i = 0; i < answers.Length; i++)
        {
            Assert.Equal(i, answers[i].Index);
            Assert.True(answers[i].Data.Span.SequenceEqual(PatternData.Create(i * 100, seed: i)), $"Concurrent call {i} differs.");
        }
    }

    [Theory]
    [MemberData(nameof(TransportMatrix.All), MemberType = typeof(TransportMatrix))]
    public async Task StatusDeadlineAndCancellation_ReachTheOtherSide_ConnectionGoesOn(TransportKind kind, TransportEndpoint endpoint)
    {
        await using FrameworkHost host = await StartAsync(kind, endpoint);
        EchoState state = host.Services.GetRequiredService<EchoState>();
        using GrpcChannel channel = CreateChannel(host);
        var client = new Echo.EchoClient(channel);

        // A status the handler throws arrives as the call's status, with its detail.
        RpcException failed = await Assert.ThrowsAsync<RpcException>(() =>
            client.FailAsync(new FailRequest { StatusCode = (int)StatusCode.PermissionDenied, Detail = "not for you" }).ResponseAsync.LongTimeout());
        Assert.Equal(StatusCode.PermissionDenied, failed.StatusCode);
        Assert.Equal("not for you", failed.Status.Detail);

        // A deadline: the client gives up, and the server's handler sees its call cancelled.
        Task<bool> deadlineSeen = state.Register("deadline");
        RpcException expired = await Assert.ThrowsAsync<RpcException>(() =>
            client.WaitAsync(new WaitRequest { Id = "deadline" }, deadline: DateTime.UtcNow.AddMilliseconds(300)).ResponseAsync.LongTimeout());
        Assert.Equal(StatusCode.DeadlineExceeded, expired.StatusCode);
        Assert.True(await deadlineSeen.LongTimeout(), "The server's handler did not see the deadline.");

        // A cancellation by the client (a stream reset on the wire) reaches the server's handler too.
        Task<bool> cancelSeen = state.Register("cancel");
        using var cancellation = new CancellationTokenSource();
        AsyncUnaryCall<Chunk> waiting = client.WaitAsync(new WaitRequest { Id = "cancel" }, cancellationToken: cancellation.Token);
        await state.WhenStarted("cancel").LongTimeout();
        cancellation.Cancel();
        RpcException cancelled = await Assert.ThrowsAsync<RpcException>(() => waiting.ResponseAsync.LongTimeout());
        Assert.Equal(StatusCode.Cancelled, cancelled.StatusCode);
        Assert.True(await cancelSeen.LongTimeout(), "The server's handler did not see the cancellation.");

        // The connection serves on.
        Chunk after = await client.UnaryAsync(new Chunk { Data = ByteString.CopyFromUtf8("after"), Index = 1 }).ResponseAsync.LongTimeout();
        Assert.Equal("after", after.Data.ToStringUtf8());
    }

    private static Task<FrameworkHost> StartAsync(TransportKind kind, TransportEndpoint endpoint, bool tls = false)
        => FrameworkHost.StartAsync(
            kind,
            endpoint,
            tls ? HttpProtocols.Http1AndHttp2 : HttpProtocols.Http2,
            services =>
            {
                services.AddGrpc(o => o.MaxReceiveMessageSize = 4 * 1024 * 1024);
                services.AddSingleton<EchoState>();
            },
            app => app.MapGrpcService<EchoService>(),
            tls);

    private static GrpcChannel CreateChannel(FrameworkHost host)
        => GrpcChannel.ForAddress(host.BaseAddress, new GrpcChannelOptions
        {
            HttpHandler = host.CreateHandler(),
            MaxReceiveMessageSize = 4 * 1024 * 1024,
            DisposeHttpClient = true,
        });
}

/// <summary>Which waiting calls the server saw start and end cancelled.</summary>
internal sealed class EchoState
{
    private readonly ConcurrentDictionary<string, (TaskCompletionSource Started, TaskCompletionSource<bool> Cancelled)> _calls = new();

    public Task<bool> Register(string id) => Entry(id).Cancelled.Task;

    public Task WhenStarted(string id) => Entry(id).Started.Task;

    public (TaskCompletionSource Started, TaskCompletionSource<bool> Cancelled) Entry(string id)
        => _calls.GetOrAdd(id, static _ => (
            new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously),
            new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously)));
}

internal sealed class EchoService(EchoState state) : Echo.EchoBase
{
    public static byte[] ChunkData(int index, int size) => PatternData.Create(size, seed: 50_000 + index);

    public override Task<Chunk> Unary(Chunk request, ServerCallContext context) => Task.FromResult(request);

    public override async Task ServerStream(StreamRequest request, IServerStreamWriter<Chunk> responseStream, ServerCallContext context)
    {
        for (int i = 0; i < request.Count; i++)
        {
            await responseStream.WriteAsync(new Chunk { Data = ByteString.CopyFrom(ChunkData(i, request.Size)), Index = i });
        }
    }

    public override async Task<Digest> ClientStream(IAsyncStreamReader<Chunk> requestStream, ServerCallContext context)
    {
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        long length = 0;
        int count = 0;
        await foreach (Chunk chunk in requestStream.ReadAllAsync())
        {
            if (chunk.Index != count)
            {
                throw new RpcException(new Status(StatusCode.DataLoss, $"message {chunk.Index} came as number {count}"));
            }

            hash.AppendData(chunk.Data.Span);
            length += chunk.Data.Length;
            count++;
        }

        return new Digest { Sha256 = Convert.ToHexString(hash.GetHashAndReset()), Length = length, Count = count };
    }

    public override async Task Duplex(IAsyncStreamReader<Chunk> requestStream, IServerStreamWriter<Chunk> responseStream, ServerCallContext context)
    {
        await foreach (Chunk chunk in requestStream.ReadAllAsync())
        {
            await responseStream.WriteAsync(chunk);
        }
    }

    public override async Task<Chunk> Wait(WaitRequest request, ServerCallContext context)
    {
        var (started, cancelled) = state.Entry(request.Id);
        started.TrySetResult();
        try
        {
            await Task.Delay(TestTimeouts.Long, context.CancellationToken);
            cancelled.TrySetResult(false);
        }
        catch (OperationCanceledException)
        {
            cancelled.TrySetResult(true);
        }

        return new Chunk();
    }

    public override Task<Chunk> Fail(FailRequest request, ServerCallContext context)
        => throw new RpcException(new Status((StatusCode)request.StatusCode, request.Detail));
}
