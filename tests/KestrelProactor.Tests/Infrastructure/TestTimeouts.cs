namespace KestrelProactor.Tests.Infrastructure;

/// <summary>Every await in a test goes through one of these, so a hang fails fast instead of stalling CI.</summary>
internal static class TestTimeouts
{
    public static readonly TimeSpan Default = TimeSpan.FromSeconds(15);
    public static readonly TimeSpan Long = TimeSpan.FromSeconds(60);

    public static Task DefaultTimeout(this Task task) => task.WaitAsync(Default);
    public static Task<T> DefaultTimeout<T>(this Task<T> task) => task.WaitAsync(Default);
    public static Task DefaultTimeout(this ValueTask task) => task.AsTask().WaitAsync(Default);
    public static Task<T> DefaultTimeout<T>(this ValueTask<T> task) => task.AsTask().WaitAsync(Default);
    public static Task LongTimeout(this Task task) => task.WaitAsync(Long);

    /// <summary>
    /// For a task that may end either way (a write or read cut short by an abort): waits until it ends and returns
    /// its exception, or null. A task still running after <see cref="Default"/> fails the test with
    /// <see cref="TimeoutException"/>, which a Record.ExceptionAsync around it would have swallowed.
    /// </summary>
    public static async Task<Exception?> EndsWithinDefaultTimeout(this Task task)
    {
        await Task.WhenAny(task).WaitAsync(Default);
        return task.IsCanceled ? new OperationCanceledException() : task.Exception?.InnerException;
    }
    public static Task<T> LongTimeout<T>(this Task<T> task) => task.WaitAsync(Long);
}
