namespace KestrelProactor.Tests.Infrastructure;

/// <summary>Waits for a condition another thread makes true, checked every 10 ms, failing after <see cref="TestTimeouts.Default"/>.</summary>
internal static class Eventually
{
    public static async Task TrueAsync(Func<bool> condition, string what)
    {
        long deadline = Environment.TickCount64 + (long)TestTimeouts.Default.TotalMilliseconds;
        while (!condition())
        {
            Assert.True(Environment.TickCount64 < deadline, $"Timed out waiting for {what}.");
            await Task.Delay(10, TestContext.Current.CancellationToken);
        }
    }
}
