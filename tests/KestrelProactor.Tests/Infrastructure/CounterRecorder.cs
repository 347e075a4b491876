using System.Diagnostics.Metrics;

namespace KestrelProactor.Tests.Infrastructure;

/// <summary>
/// Adds up what one counter records, through a <see cref="MeterListener"/> as a metrics collector would see it.
/// It listens to that instrument only, not to every instrument of the same name, because other tests run hosts of
/// their own in parallel. A counter records nothing while no listener is attached: start this before the traffic.
/// </summary>
internal sealed class CounterRecorder : IDisposable
{
    private readonly MeterListener _listener = new();
    private long _total;

    public CounterRecorder(Counter<long> counter)
    {
        _listener.SetMeasurementEventCallback<long>((_, value, _, _) => Interlocked.Add(ref _total, value));
        _listener.Start();
        _listener.EnableMeasurementEvents(counter);
    }

    public long Total => Interlocked.Read(ref _total);

    public void Dispose() => _listener.Dispose();
}
