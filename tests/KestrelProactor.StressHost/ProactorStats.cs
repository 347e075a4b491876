using System.Diagnostics.Metrics;

namespace KestrelProactor.StressHost;

/// <summary>
/// Reads the transport's <c>KestrelProactor</c> meter (and Kestrel's) through a <see cref="MeterListener"/>, so
/// this host needs none of the transport's internals: gauges are sampled on demand, counters summed.
/// </summary>
internal sealed class ProactorStats : IDisposable
{
    private readonly MeterListener _listener = new();
    private readonly Dictionary<string, long> _values = new();
    private readonly Lock _gate = new();

    public ProactorStats()
    {
        _listener.InstrumentPublished = (instrument, listener) =>
        {
            if (instrument.Meter.Name is "KestrelProactor" or "Microsoft.AspNetCore.Server.Kestrel")
            {
                listener.EnableMeasurementEvents(instrument);
            }
        };
        _listener.SetMeasurementEventCallback<long>(OnMeasurement);
        _listener.SetMeasurementEventCallback<int>((instrument, value, tags, state) => OnMeasurement(instrument, value, tags, state));
        _listener.Start();
    }

    private void OnMeasurement(Instrument instrument, long value, ReadOnlySpan<KeyValuePair<string, object?>> tags, object? state)
    {
        if (instrument is Histogram<int>)
        {
            return;
        }

        lock (_gate)
        {
            // Observable gauges report the current value; counters and up-down counters report deltas.
            bool observable = instrument.IsObservable;
            _values[instrument.Name] = observable ? value : _values.GetValueOrDefault(instrument.Name) + value;
        }
    }

    public Dictionary<string, long> Snapshot()
    {
        lock (_gate)
        {
            foreach (string name in _values.Keys.ToArray())
            {
                if (name.EndsWith("in_flight", StringComparison.Ordinal) || name.EndsWith("buffers_lent", StringComparison.Ordinal) || name == "kestrel.proactor.connections")
                {
                    _values[name] = 0;
                }
            }
        }

        _listener.RecordObservableInstruments();
        lock (_gate)
        {
            return new Dictionary<string, long>(_values);
        }
    }

    public void Dispose() => _listener.Dispose();
}
