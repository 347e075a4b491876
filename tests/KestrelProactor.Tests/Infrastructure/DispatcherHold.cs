using KestrelProactor.Dispatching;

namespace KestrelProactor.Tests.Infrastructure;

/// <summary>
/// Holds a dispatcher's thread in a work item until disposed (or the default time-out), so that what the kernel
/// completes meanwhile is handled in one batch when it goes on.
/// </summary>
internal sealed class DispatcherHold : IDisposable
{
    private readonly ManualResetEventSlim _release = new();

    private DispatcherHold()
    {
    }

    /// <summary>Returns once the dispatcher is held; <paramref name="onDispatcher"/> runs there first.</summary>
    public static async Task<DispatcherHold> HoldAsync(ProactorDispatcher dispatcher, Action? onDispatcher = null)
    {
        var hold = new DispatcherHold();
        var holding = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        dispatcher.Schedule(
            _ =>
            {
                onDispatcher?.Invoke();
                holding.TrySetResult();
                hold._release.Wait(TestTimeouts.Default);
            },
            null);
        await holding.Task.DefaultTimeout();
        return hold;
    }

    /// <summary>Returns once the dispatcher blocks in the kernel (its loop counts itself asleep, and a moment more).</summary>
    public static async Task UntilSleepingAsync(ProactorDispatcher dispatcher, CancellationToken cancellationToken = default)
    {
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        timeout.CancelAfter(TestTimeouts.Default);
        while (!dispatcher.IsSleepingForTests)
        {
            await Task.Delay(5, timeout.Token);
        }

        // Asleep in the kernel, not only about to be: the flag is set just before the enter.
        await Task.Delay(20, timeout.Token);
    }

    /// <summary>Lets the dispatcher go on (idempotent).</summary>
    public void Release() => _release.Set();

    public void Dispose() => _release.Set();
}
