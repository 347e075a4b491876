using System.Collections.Concurrent;

namespace KestrelProactor.Tests.Reliability;

/// <summary>What a request handler of the fault app saw when its request ended.</summary>
/// <param name="Endpoint">The endpoint that recorded it.</param>
/// <param name="RequestAborted">Whether <c>HttpContext.RequestAborted</c> had fired.</param>
/// <param name="Exception">The exception type that ended the handler, or null when it ran to completion.</param>
/// <param name="Bytes">Body bytes read or written before the end.</param>
public sealed record AppOutcome(string Endpoint, bool RequestAborted, string? Exception, long Bytes);

/// <summary>Signals and counters the fault app shares with the test driving it.</summary>
public sealed class FaultAppState
{
    private int _connectionsOpened;
    private int _connectionsClosed;
    private int _slowEntered;
    private int _slowCompleted;
    private int _uploadsEntered;

    /// <summary>Connections Kestrel handed to the app's connection middleware.</summary>
    public int ConnectionsOpened => Volatile.Read(ref _connectionsOpened);

    /// <summary>Connections whose <c>ConnectionClosed</c> token has fired.</summary>
    public int ConnectionsClosed => Volatile.Read(ref _connectionsClosed);

    public int SlowEntered => Volatile.Read(ref _slowEntered);

    /// <summary>Uploads whose handler has read their first body bytes.</summary>
    public int UploadsEntered => Volatile.Read(ref _uploadsEntered);

    public void OnUploadEntered() => Interlocked.Increment(ref _uploadsEntered);

    public int SlowCompleted => Volatile.Read(ref _slowCompleted);

    /// <summary>Set by a fault endpoint once it is inside its request (body being read, response being written).</summary>
    public TaskCompletionSource Entered { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public ConcurrentQueue<AppOutcome> Outcomes { get; } = new();

    private readonly SemaphoreSlim _outcomeArrived = new(0);

    public void OnConnectionOpened() => Interlocked.Increment(ref _connectionsOpened);

    public void OnConnectionClosed() => Interlocked.Increment(ref _connectionsClosed);

    public void OnSlowEntered() => Interlocked.Increment(ref _slowEntered);

    public void OnSlowCompleted() => Interlocked.Increment(ref _slowCompleted);

    public void Record(AppOutcome outcome)
    {
        Outcomes.Enqueue(outcome);
        _outcomeArrived.Release();
    }

    /// <summary>Waits until <paramref name="count"/> outcomes in all have been recorded.</summary>
    public async Task<AppOutcome[]> WaitForOutcomesAsync(int count, TimeSpan timeout)
    {
        using var cts = new CancellationTokenSource(timeout);
        while (Outcomes.Count < count)
        {
            try
            {
                await _outcomeArrived.WaitAsync(cts.Token);
            }
            catch (OperationCanceledException)
            {
                Assert.Fail($"Expected {count} app outcomes within {timeout}, got {Outcomes.Count}: {string.Join("; ", Outcomes)}");
            }
        }

        return [.. Outcomes];
    }
}
