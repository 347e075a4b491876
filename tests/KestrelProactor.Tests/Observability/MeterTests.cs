using System.Collections.Concurrent;
using System.Diagnostics.Metrics;
using System.Net;
using KestrelProactor.Tests.Infrastructure;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;

namespace KestrelProactor.Tests.Observability;

/// <summary>
/// The <c>KestrelProactor</c> meter of a real host, as dotnet-counters or OpenTelemetry sees it: created through the
/// host's IMeterFactory, every documented instrument published, and dispatcher facts recorded while it serves.
/// </summary>
public sealed class MeterTests
{
    private static readonly string[] Documented =
    [
        "kestrel.proactor.completions_per_wake",
        "kestrel.proactor.submissions_per_enter",
        "kestrel.proactor.operations_in_flight",
        "kestrel.proactor.receive_buffers_lent",
        "kestrel.proactor.connections",
        "kestrel.proactor.receive_buffers_exhausted",
        "kestrel.proactor.cq_overflows",
        "kestrel.proactor.handler_faults",
    ];

    [Fact]
    public async Task ServingRequests_PublishesDocumentedInstrumentsAndRecordsDispatcherFacts()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "The io_uring backend is Linux only.");
        WebApplicationBuilder builder = WebApplication.CreateSlimBuilder();
        builder.WebHost.UseKestrel(k => k.Listen(IPAddress.Loopback, 0));
        builder.WebHost.UseProactorTransport(o => TransportFactories.Configure(TransportKind.Proactor, o));
        await using WebApplication app = builder.Build();
        app.MapGet("/", () => "ok");
        var meterFactory = app.Services.GetRequiredService<IMeterFactory>();

        var published = new ConcurrentDictionary<string, string?>();
        var totals = new ConcurrentDictionary<string, long>();
        using var listener = new MeterListener();
        listener.InstrumentPublished = (instrument, l) =>
        {
            // Only this host's meter: other tests run hosts of their own in parallel.
            if (instrument.Meter.Name == "KestrelProactor" && ReferenceEquals(instrument.Meter.Scope, meterFactory))
            {
                published[instrument.Name] = instrument.Unit;
                l.EnableMeasurementEvents(instrument);
            }
        };
        listener.SetMeasurementEventCallback<int>((instrument, value, _, _) => totals.AddOrUpdate(instrument.Name, value, (_, t) => t + value));
        listener.SetMeasurementEventCallback<long>((instrument, value, _, _) => totals.AddOrUpdate(instrument.Name, value, (_, t) => t + value));
        listener.Start();

        await app.StartAsync().DefaultTimeout();
        string address = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
        using var client = new HttpClient { BaseAddress = new Uri(address), Timeout = TestTimeouts.Default };
        for (int i = 0; i < 5; i++)
        {
            await client.GetStringAsync("/", TestContext.Current.CancellationToken).DefaultTimeout();
        }

        // The keep-alive connection is still open: the observable up-down counters see it.
        totals.TryRemove("kestrel.proactor.connections", out _);
        listener.RecordObservableInstruments();
        long connections = totals.GetValueOrDefault("kestrel.proactor.connections");
        await app.StopAsync().DefaultTimeout();

        Assert.All(Documented, name => Assert.True(published.ContainsKey(name), $"{name} was not published."));
        Assert.All(published.Values, unit => Assert.False(string.IsNullOrEmpty(unit)));
        // Exactly the client's one keep-alive connection: the listener is not a connection.
        Assert.Equal(1, connections);
        Assert.True(totals.GetValueOrDefault("kestrel.proactor.completions_per_wake") > 0, "No completions were recorded.");
        Assert.True(totals.GetValueOrDefault("kestrel.proactor.submissions_per_enter") > 0, "No submissions were recorded.");
    }
}
