using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net;
using KestrelProactor.Tests.Infrastructure;

namespace KestrelProactor.Tests.Reliability;

/// <summary>
/// Random and mutated input for a bounded time against plain HTTP/1.1, h2c and HTTPS endpoints: the
/// dispatchers never fault, every connection ends with a clean close or a reset, and the counters return to
/// their baseline. Longer runs: tests/soak/soak.sh.
/// </summary>
[Collection(ReliabilityCollection.Name)]
public sealed class BadInputTests
{
    private static readonly TimeSpan s_duration = TimeSpan.FromSeconds(4);

    [Theory]
    [MemberData(nameof(TransportFactories.All), MemberType = typeof(TransportFactories))]
    public async Task Fuzz_RandomAndMutatedInput_NoFaultEveryConnectionEndsAndAllIsReleased(TransportKind kind)
    {
        await using var server = await FaultServer.StartAsync(
            kind,
            k =>
            {
                k.Limits.KeepAliveTimeout = TimeSpan.FromSeconds(5);
                k.Limits.RequestHeadersTimeout = TimeSpan.FromSeconds(5);
            },
            endpoints: FaultEndpoints.H2c | FaultEndpoints.Https);
        var ends = new ConcurrentDictionary<(FuzzInput, ConnectionEnd), int>();
        var stillOpen = new ConcurrentQueue<string>();
        FuzzInput[] inputs = Enum.GetValues<FuzzInput>();
        var stopwatch = Stopwatch.StartNew();

        // Eight workers, two per kind of input; each connection is bounded by its own time-out.
        await Task.WhenAll(Enumerable.Range(0, 8).Select(worker => Task.Run(async () =>
        {
            int seed = (int)kind * 1000 + worker;
            var fuzz = new FuzzClient(seed);
            FuzzInput input = inputs[worker % inputs.Length];
            IPEndPoint target = input switch
            {
                FuzzInput.Http2FramesAfterPreface => server.H2cEndPoint!,
                FuzzInput.TruncatedClientHello => server.HttpsEndPoint!,
                _ => server.EndPoint,
            };
            for (int i = 0; i < 10_000 && stopwatch.Elapsed < s_duration; i++)
            {
                byte[] payload = fuzz.Create(input);
                ConnectionEnd end = await FuzzClient.RunOneAsync(target, payload, TestTimeouts.Default);
                ends.AddOrUpdate((input, end), 1, static (_, n) => n + 1);
                if (end == ConnectionEnd.StillOpen)
                {
                    stillOpen.Enqueue($"seed {seed} #{i} {input}: {Convert.ToHexString(payload.AsSpan(0, Math.Min(payload.Length, 256)))}");
                }
            }
        }))).LongTimeout();

        TestContext.Current.SendDiagnosticMessage(string.Join(", ", ends.OrderBy(e => e.Key).Select(e => $"{e.Key.Item1}/{e.Key.Item2}={e.Value}")));
        Assert.Empty(stillOpen);
        Assert.All(inputs, input => Assert.True(ends.Keys.Any(k => k.Item1 == input), $"No {input} connection ran."));
        await server.AssertServesAsync();
        await server.AssertReleasedAsync();
    }
}
