using KestrelProactor.Tests.Infrastructure;

namespace KestrelProactor.Tests.EndToEnd;

/// <summary>
/// Four submission queue entries per ring: nearly every burst of operations finds the queue full, and large
/// sends complete partially, so these drive the overflow and resubmission paths with real traffic.
/// </summary>
public sealed class TinyRingTests
{
    // 16 MiB natively; a quarter under Wine (TestHost.StressBytes).
    private static readonly long SixteenMiB = TestHost.StressBytes(16L * 1024 * 1024);

    [Theory]
    [MemberData(nameof(TransportMatrix.All), MemberType = typeof(TransportMatrix))]
    public async Task Upload_16MiB_WithFourEntryRings_ChecksumMatches(TransportKind kind, TransportEndpoint endpoint)
    {
        Assert.SkipWhen(kind == TransportKind.Sockets, "Ring sizes apply to the proactor transport only.");
        await using var server = await E2EServer.StartAsync(kind, endpoint, configureProactor: TinyRings);
        using var client = server.CreateHttpClient();

        await BodyChecks.UploadAndVerifyAsync(server, client, SixteenMiB, seed: 16, chunked: false);
        await BodyChecks.UploadAndVerifyAsync(server, client, SixteenMiB / 4 + 3, seed: 17, chunked: true, writeSize: 5_000);
    }

    [Theory]
    [MemberData(nameof(TransportMatrix.All), MemberType = typeof(TransportMatrix))]
    public async Task Download_16MiB_WithFourEntryRings_ChecksumMatches(TransportKind kind, TransportEndpoint endpoint)
    {
        Assert.SkipWhen(kind == TransportKind.Sockets, "Ring sizes apply to the proactor transport only.");
        await using var server = await E2EServer.StartAsync(kind, endpoint, configureProactor: TinyRings);
        using var client = server.CreateHttpClient();

        await BodyChecks.DownloadAndVerifyAsync(server, client, SixteenMiB, seed: 18, chunked: false);
        await BodyChecks.DownloadAndVerifyAsync(server, client, SixteenMiB / 4 + 3, seed: 19, chunked: true);
    }

    [Theory]
    [MemberData(nameof(TransportMatrix.All), MemberType = typeof(TransportMatrix))]
    public async Task ConcurrentEchoes_WithFourEntryRings_AllIntact(TransportKind kind, TransportEndpoint endpoint)
    {
        Assert.SkipWhen(kind == TransportKind.Sockets, "Ring sizes apply to the proactor transport only.");
        await using var server = await E2EServer.StartAsync(kind, endpoint, configureProactor: TinyRings);
        using var client = server.CreateHttpClient(h => h.MaxConnectionsPerServer = 32);

        // More connections than queue entries: accepts, receives and sends all compete for four slots.
        await Task.WhenAll(Enumerable.Range(0, 32).Select(async i =>
        {
            byte[] body = PatternData.Create(256 * 1024 + i, seed: 100 + i);
            using var response = await client.PostAsync("/echo", new ByteArrayContent(body), TestContext.Current.CancellationToken);
            server.AssertServedByExpectedTransport(response);
            Assert.Equal(body, await response.Content.ReadAsByteArrayAsync(TestContext.Current.CancellationToken));
        })).LongTimeout();
    }

    private static void TinyRings(ProactorTransportOptions options)
    {
        options.SubmissionQueueSize = 4;
    }
}
