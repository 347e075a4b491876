using System.Net.Sockets;
using KestrelProactor.Tests.Infrastructure;
using Microsoft.AspNetCore.Connections;

namespace KestrelProactor.Tests.Contract;

/// <summary>Contract: many connections at once, each with its own data, none mixed up or lost.</summary>
public sealed class ConcurrencyTests
{
    private const int ClientCount = 200;
    private const int PayloadSize = 64 * 1024;

    [Theory]
    [MemberData(nameof(TransportMatrix.All), MemberType = typeof(TransportMatrix))]
    public async Task AcceptAsync_ManyConcurrentClients_EachEchoIsIntact(TransportKind kind, TransportEndpoint endpoint)
    {
        // Arrange
        await using ListenerHarness harness = await ListenerHarness.BindAsync(kind, endpoint);
        Task<Task[]> acceptLoop = Task.Run(async () =>
        {
            var echoes = new List<Task>(ClientCount);
            for (int i = 0; i < ClientCount; i++)
            {
                ConnectionContext connection = await harness.AcceptAsync();
                echoes.Add(ServerPipes.EchoAsync(connection));
            }

            return echoes.ToArray();
        }, TestContext.Current.CancellationToken);

        // Act: a distinct payload per client, so a cross-wired connection fails its hash.
        Task<bool>[] clients = Enumerable.Range(0, ClientCount).Select(i => Task.Run(async () =>
        {
            byte[] payload = RawClient.CreatePayload(PayloadSize, seed: i);
            Socket client = await harness.ConnectAsync();
            byte[] echoed = await RawClient.ExchangeAsync(client, payload);
            return echoed.Length == payload.Length && RawClient.Hash(echoed) == RawClient.Hash(payload);
        }, TestContext.Current.CancellationToken)).ToArray();

        bool[] intact = await Task.WhenAll(clients).LongTimeout();
        Task[] echoes = await acceptLoop.LongTimeout();
        await Task.WhenAll(echoes).LongTimeout();

        // Assert
        Assert.All(intact, Assert.True);
    }
}
