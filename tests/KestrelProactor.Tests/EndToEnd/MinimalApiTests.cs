using System.Net;
using System.Net.Http.Json;
using KestrelProactor.Tests.Infrastructure;

namespace KestrelProactor.Tests.EndToEnd;

public sealed class MinimalApiTests
{
    [Theory]
    [MemberData(nameof(TransportMatrix.All), MemberType = typeof(TransportMatrix))]
    public async Task Get_MinimalApiEndpoint_ReturnsText(TransportKind kind, TransportEndpoint endpoint)
    {
        await using var server = await E2EServer.StartAsync(kind, endpoint);
        using var client = server.CreateHttpClient();

        using var response = await client.GetAsync("/hello", TestContext.Current.CancellationToken).DefaultTimeout();

        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        server.AssertServedByExpectedTransport(response);
        Assert.Equal("Hello from KestrelProactor", await response.Content.ReadAsStringAsync(TestContext.Current.CancellationToken).DefaultTimeout());
    }

    [Theory]
    [MemberData(nameof(TransportMatrix.All), MemberType = typeof(TransportMatrix))]
    public async Task Post_JsonBody_IsBoundAndAnswered(TransportKind kind, TransportEndpoint endpoint)
    {
        await using var server = await E2EServer.StartAsync(kind, endpoint);
        using var client = server.CreateHttpClient();

        using var response = await client.PostAsJsonAsync("/greet", new Greeting("io_uring", 41), TestContext.Current.CancellationToken).DefaultTimeout();

        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        server.AssertServedByExpectedTransport(response);
        var greeting = await response.Content.ReadFromJsonAsync<Greeting>(TestContext.Current.CancellationToken).DefaultTimeout();
        Assert.Equal(new Greeting("Hello, io_uring", 42), greeting);
    }

    [Theory]
    [MemberData(nameof(TransportMatrix.All), MemberType = typeof(TransportMatrix))]
    public async Task KeepAlive_ManyRequestsOnOneConnection_AllAnswered(TransportKind kind, TransportEndpoint endpoint)
    {
        await using var server = await E2EServer.StartAsync(kind, endpoint);
        using var client = server.CreateHttpClient(h => h.MaxConnectionsPerServer = 1);

        for (int i = 0; i < 100; i++)
        {
            byte[] body = PatternData.Create(1 + (i * 997 % 20_000), seed: i);
            using var response = await client.PostAsync("/echo", new ByteArrayContent(body), TestContext.Current.CancellationToken).DefaultTimeout();
            Assert.Equal(HttpStatusCode.OK, response.StatusCode);
            server.AssertServedByExpectedTransport(response);
            Assert.Equal(body, await response.Content.ReadAsByteArrayAsync(TestContext.Current.CancellationToken).DefaultTimeout());
        }
    }
}
