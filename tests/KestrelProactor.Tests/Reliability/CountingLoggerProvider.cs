using System.Collections.Concurrent;
using Microsoft.Extensions.Logging;

namespace KestrelProactor.Tests.Reliability;

/// <summary>
/// Keeps every Warning-or-worse entry, and every entry of the transport's own category, so a test can assert
/// that no dispatcher failed or faulted and see the accept retries.
/// </summary>
internal sealed class CountingLoggerProvider : ILoggerProvider
{
    public const string TransportCategory = "KestrelProactor";

    // ProactorLog event ids.
    public const int CompletionHandlerFault = 3;
    public const int WorkItemFault = 4;
    public const int DispatcherFailed = 5;
    public const int AcceptRetry = 10;
    public const int ConnectionClosedCallbackFault = 14;

    private readonly ConcurrentQueue<Entry> _entries = new();

    public IReadOnlyList<Entry> Entries => [.. _entries];

    public ILogger CreateLogger(string categoryName) => new Logger(this, categoryName);

    /// <summary>Transport entries that mean a dispatcher, a handler or a work item failed.</summary>
    public IReadOnlyList<Entry> TransportFaults => _entries
        .Where(e => e.Category == TransportCategory && e.EventId is CompletionHandlerFault or WorkItemFault or DispatcherFailed or ConnectionClosedCallbackFault)
        .ToArray();

    public int Count(int eventId) => _entries.Count(e => e.Category == TransportCategory && e.EventId == eventId);

    public void Dispose()
    {
    }

    public sealed record Entry(string Category, LogLevel Level, int EventId, string Message)
    {
        public override string ToString() => $"{Level} {Category}[{EventId}] {Message}";
    }

    private sealed class Logger(CountingLoggerProvider owner, string category) : ILogger
    {
        public IDisposable? BeginScope<TState>(TState state)
            where TState : notnull => null;

        // Debug entries of the transport are per connection: not kept, or 10,000 connections would fill the log.
        public bool IsEnabled(LogLevel logLevel) => logLevel >= LogLevel.Warning;

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
        {
            if (IsEnabled(logLevel))
            {
                owner._entries.Enqueue(new Entry(category, logLevel, eventId.Id, formatter(state, exception) + (exception is null ? "" : " " + exception.GetType().Name)));
            }
        }
    }
}
