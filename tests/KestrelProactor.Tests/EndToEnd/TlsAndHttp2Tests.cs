using System.Net;
using System.Net.Security;
using KestrelProactor.Tests.Infrastructure;
using Microsoft.AspNetCore.Server.Kestrel.Core;

namespace KestrelProactor.Tests.EndToEnd;

public sealed class TlsAndHttp2Tests
{
    [Theory]
    [MemberData(nameof(TransportMatrix.All), MemberType = typeof(TransportMatrix))]
    public async Task Https_Http11_EchoesOneMiB(TransportKind kind, TransportEndpoint endpoint)
    {
        Assert.SkipWhen(TestHost.IsWine, TestHost.WineNoCngEcdsa);
        await using var server = await E2EServer.StartAsync(kind, endpoint, listen: HttpsOn(HttpProtocols.Http1));
        Assert.Equal("https", server.BaseAddress.Scheme);
        using var client = server.CreateHttpClient(TrustTestCertificate, HttpVersion.Version11);
        byte[] body = PatternData.Create(1024 * 1024, seed: 11);

        using var response = await client.PostAsync("/echo", new ByteArrayContent(body), TestContext.Current.CancellationToken).LongTimeout();

        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.Equal(HttpVersion.Version11, response.Version);
        server.AssertServedByExpectedTransport(response);
        Assert.Equal(body, await response.Content.ReadAsByteArrayAsync(TestContext.Current.CancellationToken).DefaultTimeout());
    }

    [Theory]
    [MemberData(nameof(TransportMatrix.All), MemberType = typeof(TransportMatrix))]
    public async Task Https_Http2NegotiatedByAlpn_ConcurrentStreamsOnOneConnection(TransportKind kind, TransportEndpoint endpoint)
    {
        Assert.SkipWhen(TestHost.IsWine, TestHost.WineNoCngEcdsa);
        await using var server = await E2EServer.StartAsync(kind, endpoint, listen: HttpsOn(HttpProtocols.Http1AndHttp2));
        SslApplicationProtocol? negotiated = null;
        using var client = server.CreateHttpClient(
            handler =>
            {
                handler.EnableMultipleHttp2Connections = false;
                handler.SslOptions.RemoteCertificateValidationCallback = (sender, certificate, chain, errors) =>
                {
                    negotiated = ((SslStream)sender).NegotiatedApplicationProtocol;
                    return TestCertificate.Validate(sender, certificate, chain, errors);
                };
            },
            HttpVersion.Version20);

        var responses = await Task.WhenAll(Enumerable.Range(0, 20).Select(async i =>
        {
            byte[] body = PatternData.Create(100_000 + i, seed: 200 + i);
            using var response = await client.PostAsync("/echo-buffered", new ByteArrayContent(body), TestContext.Current.CancellationToken);
            Assert.Equal(body, await response.Content.ReadAsByteArrayAsync(TestContext.Current.CancellationToken));
            return (response.Version, response.StatusCode, Transport: response.Headers.GetValues(E2EApp.TransportHeader).Single());
        })).LongTimeout();

        Assert.Equal(SslApplicationProtocol.Http2, negotiated);
        Assert.All(responses, r =>
        {
            Assert.Equal(HttpStatusCode.OK, r.StatusCode);
            Assert.Equal(HttpVersion.Version20, r.Version);
            server.AssertServedByExpectedTransport(r.Transport);
        });
        await BodyChecks.DownloadAndVerifyAsync(server, client, 4 * 1024 * 1024, seed: 201, chunked: false);
    }

    [Theory]
    [MemberData(nameof(TransportMatrix.All), MemberType = typeof(TransportMatrix))]
    public async Task H2c_PriorKnowledge_ServesHttp2OverPlainTcp(TransportKind kind, TransportEndpoint endpoint)
    {
        await using var server = await E2EServer.StartAsync(kind, endpoint, listen: o => o.Protocols = HttpProtocols.Http2);
        Assert.Equal("http", server.BaseAddress.Scheme);
        using var client = server.CreateHttpClient(version: HttpVersion.Version20);

        using var hello = await client.GetAsync("/hello", TestContext.Current.CancellationToken).DefaultTimeout();
        Assert.Equal(HttpStatusCode.OK, hello.StatusCode);
        Assert.Equal(HttpVersion.Version20, hello.Version);
        server.AssertServedByExpectedTransport(hello);

        var report = await BodyChecks.UploadAndVerifyAsync(server, client, 4 * 1024 * 1024, seed: 202, chunked: true);
        Assert.False(report.Chunked, "HTTP/2 has no chunked transfer coding; the body arrives in DATA frames.");
    }

    private static Action<ListenOptions> HttpsOn(HttpProtocols protocols)
        => listen =>
        {
            listen.Protocols = protocols;
            listen.UseHttps(TestCertificate.Certificate);
        };

    private static void TrustTestCertificate(SocketsHttpHandler handler)
        => handler.SslOptions.RemoteCertificateValidationCallback = TestCertificate.Validate;
}
