using System.Diagnostics.Metrics;
using KestrelProactor.Dispatching;

namespace KestrelProactor.Internal;

/// <summary>
/// The <c>KestrelProactor</c> meter: dispatcher facts that Kestrel's own metrics do not show.
/// Recording is a no-op unless a listener (dotnet-counters, OpenTelemetry) is attached.
/// </summary>
internal sealed class ProactorMetrics : IDisposable
{
    public const string MeterName = "KestrelProactor";

    private readonly Meter _meter;
    private readonly bool _ownsMeter;
    private readonly List<ProactorDispatcher> _dispatchers = new();
    private readonly Lock _gate = new();
    private long _dispatcherFailures;

    public ProactorMetrics(IMeterFactory? meterFactory)
    {
        if (meterFactory is not null)
        {
            _meter = meterFactory.Create(MeterName);
        }
        else
        {
            _meter = new Meter(MeterName);
            _ownsMeter = true;
        }

        CompletionsPerWake = _meter.CreateHistogram<int>(
            "kestrel.proactor.completions_per_wake", "{completion}", "Completions handled per dispatcher wake-up.");
        SubmissionsPerEnter = _meter.CreateHistogram<int>(
            "kestrel.proactor.submissions_per_enter", "{submission}", "Operations handed to the kernel per system call.");
        NoBufferCount = _meter.CreateCounter<long>(
            "kestrel.proactor.receive_buffers_exhausted", "{event}", "Receives that found no free buffer in the buffer ring (-ENOBUFS).");
        CompletionQueueOverflows = _meter.CreateCounter<long>(
            "kestrel.proactor.cq_overflows", "{event}", "Passes that found completions held back by the kernel because the completion queue was full.");
        HandlerFaults = _meter.CreateCounter<long>(
            "kestrel.proactor.handler_faults", "{fault}", "Completion handlers that threw; each aborted its connection.");
        _meter.CreateObservableUpDownCounter(
            "kestrel.proactor.operations_in_flight", () => Sum(static d => d.InFlightOperations), "{operation}", "Operations submitted and not yet completed.");
        _meter.CreateObservableUpDownCounter(
            "kestrel.proactor.receive_buffers_lent", () => Sum(static d => d.ReceiveBuffersLent), "{buffer}", "Receive buffers handed out by the buffer rings and not yet returned.");
        _meter.CreateObservableUpDownCounter(
            "kestrel.proactor.connections", () => Sum(static d => d.OpenConnections), "{connection}", "Connections owned by the dispatchers (listeners not counted).");
        _meter.CreateObservableCounter(
            "kestrel.proactor.dispatcher_failures", () => Volatile.Read(ref _dispatcherFailures), "{failure}", "Dispatchers whose loop stopped on an unrecoverable error; the connections they owned were dropped.");
    }

    public Histogram<int> CompletionsPerWake { get; }

    public Histogram<int> SubmissionsPerEnter { get; }

    public Counter<long> NoBufferCount { get; }

    public Counter<long> CompletionQueueOverflows { get; }

    public Counter<long> HandlerFaults { get; }

    public void Register(ProactorDispatcher dispatcher)
    {
        lock (_gate)
        {
            _dispatchers.Add(dispatcher);
        }
    }

    /// <summary>Called by a dispatcher's teardown.</summary>
    public void Unregister(ProactorDispatcher dispatcher)
    {
        lock (_gate)
        {
            _dispatchers.Remove(dispatcher);
        }
    }

    /// <summary>Called once by a dispatcher whose loop failed, when it records the failure (after its teardown).</summary>
    public void CountDispatcherFailure() => Interlocked.Increment(ref _dispatcherFailures);

    private long Sum(Func<ProactorDispatcher, long> selector)
    {
        lock (_gate)
        {
            long total = 0;
            foreach (ProactorDispatcher dispatcher in _dispatchers)
            {
                total += selector(dispatcher);
            }

            return total;
        }
    }

    public void Dispose()
    {
        if (_ownsMeter)
        {
            _meter.Dispose();
        }
    }
}
