using System.Net;
using KestrelProactor.Tests.Infrastructure;

namespace KestrelProactor.Tests.EndToEnd;

public sealed class ConcurrencyTests
{
    private const int Clients = 200;

    [Theory]
    [MemberData(nameof(TransportMatrix.All), MemberType = typeof(TransportMatrix))]
    public async Task TwoHundredClients_HeldOpenTogether_EveryResponseIsTheirs(TransportKind kind, TransportEndpoint endpoint)
    {
        await using var server = await E2EServer.StartAsync(kind, endpoint);
        // The gate answers no request until all of them have arrived, so all 200 connections are open at once.
        server.State.GateTarget = Clients;
        using var client = server.CreateHttpClient(h => h.MaxConnectionsPerServer = 1000);
        var cancellationToken = TestContext.Current.CancellationToken;

        await Task.WhenAll(Enumerable.Range(0, Clients).Select(id => Task.Run(async () =>
        {
            using (var gated = await client.GetAsync($"/gate/{id}", cancellationToken))
            {
                Assert.Equal(HttpStatusCode.OK, gated.StatusCode);
                server.AssertServedByExpectedTransport(gated);
                Assert.Equal(id.ToString(System.Globalization.CultureInfo.InvariantCulture), await gated.Content.ReadAsStringAsync(cancellationToken));
            }

            for (int round = 0; round < 3; round++)
            {
                byte[] body = PatternData.Create(1 + ((id * 7919 + round * 104_729) % 32_768), seed: id * 10 + round);
                using var echoed = await client.PostAsync("/echo", new ByteArrayContent(body), cancellationToken);
                Assert.Equal(HttpStatusCode.OK, echoed.StatusCode);
                server.AssertServedByExpectedTransport(echoed);
                Assert.Equal(body, await echoed.Content.ReadAsByteArrayAsync(cancellationToken));
            }
        }, cancellationToken))).LongTimeout();
    }
}
