namespace KestrelProactor.Tests.EndToEnd;

/// <summary>What the test app shares with the test that drives it: progress counters and signals.</summary>
public sealed class E2EAppState
{
    private long _responseBytesFlushed;
    private int _gateArrivals;

    /// <summary>Response body bytes the download endpoint has flushed (each flush has returned).</summary>
    public long ResponseBytesFlushed => Volatile.Read(ref _responseBytesFlushed);

    public void AddResponseBytesFlushed(long count) => Interlocked.Add(ref _responseBytesFlushed, count);

    /// <summary>Set when the hold endpoint has been entered (its request body not yet read).</summary>
    public TaskCompletionSource HeldRequestArrived { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

    /// <summary>The test sets this to let the hold endpoint read its body.</summary>
    public TaskCompletionSource ReleaseHeldRequest { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

    /// <summary>How many requests the gate endpoint waits for before it answers any of them.</summary>
    public int GateTarget { get; set; } = int.MaxValue;

    public TaskCompletionSource GateOpen { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public void ArriveAtGate()
    {
        if (Interlocked.Increment(ref _gateArrivals) >= GateTarget)
        {
            GateOpen.TrySetResult();
        }
    }
}
