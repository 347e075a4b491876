using System.Net;
using System.Net.Http.Json;
using KestrelProactor.Tests.Infrastructure;

namespace KestrelProactor.Tests.EndToEnd;

public sealed class LargeBodyTests
{
    // 64 MiB natively; a quarter under Wine (TestHost.StressBytes).
    private static readonly long SixtyFourMiB = TestHost.StressBytes(64L * 1024 * 1024);

    [Theory]
    [MemberData(nameof(TransportMatrix.All), MemberType = typeof(TransportMatrix))]
    public async Task Upload_64MiB_ServerChecksumMatches(TransportKind kind, TransportEndpoint endpoint)
    {
        await using var server = await E2EServer.StartAsync(kind, endpoint);
        using var client = server.CreateHttpClient();

        await BodyChecks.UploadAndVerifyAsync(server, client, SixtyFourMiB, seed: 64, chunked: false);
    }

    [Theory]
    [MemberData(nameof(TransportMatrix.All), MemberType = typeof(TransportMatrix))]
    public async Task Download_64MiB_ClientChecksumMatches(TransportKind kind, TransportEndpoint endpoint)
    {
        await using var server = await E2EServer.StartAsync(kind, endpoint);
        using var client = server.CreateHttpClient();

        await BodyChecks.DownloadAndVerifyAsync(server, client, SixtyFourMiB, seed: 65, chunked: false);
    }

    [Theory]
    [MemberData(nameof(TransportMatrix.All), MemberType = typeof(TransportMatrix))]
    public async Task Upload_ChunkedRequestBody_ServerSeesChunkedAndChecksumMatches(TransportKind kind, TransportEndpoint endpoint)
    {
        await using var server = await E2EServer.StartAsync(kind, endpoint);
        using var client = server.CreateHttpClient();

        // Odd write sizes put chunk boundaries everywhere relative to the transport's receive buffers.
        var report = await BodyChecks.UploadAndVerifyAsync(server, client, 3 * 1024 * 1024 + 17, seed: 66, chunked: true, writeSize: 7_777);

        Assert.True(report.Chunked);
        Assert.Null(report.ContentLength);
    }

    [Theory]
    [MemberData(nameof(TransportMatrix.All), MemberType = typeof(TransportMatrix))]
    public async Task Download_ChunkedResponseBody_ArrivesChunkedAndWhole(TransportKind kind, TransportEndpoint endpoint)
    {
        await using var server = await E2EServer.StartAsync(kind, endpoint);
        using var client = server.CreateHttpClient();

        using var small = await client.GetAsync("/chunked", TestContext.Current.CancellationToken).DefaultTimeout();
        server.AssertServedByExpectedTransport(small);
        Assert.True(small.Headers.TransferEncodingChunked);
        Assert.Equal("part 0;part 1;part 2;part 3;part 4;", await small.Content.ReadAsStringAsync(TestContext.Current.CancellationToken).DefaultTimeout());

        await BodyChecks.DownloadAndVerifyAsync(server, client, 8 * 1024 * 1024 + 5, seed: 67, chunked: true);
    }
}

/// <summary>Upload and download round trips checked with SHA-256 on both ends; shared with the tiny-ring tests.</summary>
internal static class BodyChecks
{
    public static async Task<BodyReport> UploadAndVerifyAsync(
        E2EServer server, HttpClient client, long length, int seed, bool chunked, int writeSize = 64 * 1024)
    {
        string expected = PatternData.Sha256Hex(length, seed);

        using var response = await client.PostAsync(
            "/sha256", new PatternContent(length, seed, chunked, writeSize), TestContext.Current.CancellationToken).LongTimeout();

        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        server.AssertServedByExpectedTransport(response);
        var report = await response.Content.ReadFromJsonAsync<BodyReport>(TestContext.Current.CancellationToken).DefaultTimeout();
        Assert.NotNull(report);
        Assert.Equal(length, report.Length);
        Assert.Equal(expected, report.Sha256);
        return report;
    }

    public static async Task DownloadAndVerifyAsync(E2EServer server, HttpClient client, long length, int seed, bool chunked)
    {
        string expected = PatternData.Sha256Hex(length, seed);
        string uri = $"/download?size={length}&seed={seed}" + (chunked ? "&chunked=true" : "");

        using var response = await client.GetAsync(uri, HttpCompletionOption.ResponseHeadersRead, TestContext.Current.CancellationToken).DefaultTimeout();

        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        server.AssertServedByExpectedTransport(response);
        if (chunked)
        {
            Assert.True(response.Headers.TransferEncodingChunked);
        }
        else
        {
            Assert.Equal(length, response.Content.Headers.ContentLength);
        }

        await using var body = await response.Content.ReadAsStreamAsync(TestContext.Current.CancellationToken).DefaultTimeout();
        var (received, sha) = await PatternData.HashStreamAsync(body, TestContext.Current.CancellationToken).LongTimeout();
        Assert.Equal(length, received);
        Assert.Equal(expected, sha);
    }
}
