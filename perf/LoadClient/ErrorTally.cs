namespace KestrelProactor.Perf;

/// <summary>Counts errors from many concurrent operations and keeps the first one's text for the report.</summary>
internal sealed class ErrorTally
{
    private int _count;
    private string? _first;

    public int Count => Volatile.Read(ref _count);

    public string First => (_first ?? "").Replace('"', '\'');

    public void Add(string stage, Exception exception)
    {
        Interlocked.Increment(ref _count);
        Interlocked.CompareExchange(ref _first, $"{stage}: {exception.GetType().Name}: {exception.Message}", null);
    }
}
