using Microsoft.Extensions.Logging;

namespace KestrelProactor.Internal;

/// <summary>
/// The transport's log messages. Event ids are stable: dashboards and alerts may key on them (README lists them).
/// </summary>
internal static partial class ProactorLog
{
    [LoggerMessage(1, LogLevel.Information, "Proactor transport started: backend {Backend}, {DispatcherCount} dispatchers, kernel {KernelVersion}, features: {Features}.", EventName = "BackendStarted")]
    public static partial void BackendStarted(ILogger logger, string backend, int dispatcherCount, string kernelVersion, string features);

    [LoggerMessage(2, LogLevel.Warning, "The proactor backend is unavailable ({Reason}); binding with Kestrel's socket transport instead.", EventName = "FallingBackToSockets")]
    public static partial void FallingBackToSockets(ILogger logger, string reason, Exception? exception);

    [LoggerMessage(3, LogLevel.Error, "A completion handler of dispatcher {DispatcherId} threw while handling {Operation} for connection {ConnectionId}; the connection is aborted and the dispatcher continues.", EventName = "CompletionHandlerFault")]
    public static partial void CompletionHandlerFault(ILogger logger, int dispatcherId, string operation, string connectionId, Exception exception);

    [LoggerMessage(4, LogLevel.Error, "A work item on dispatcher {DispatcherId} threw; the dispatcher continues.", EventName = "WorkItemFault")]
    public static partial void WorkItemFault(ILogger logger, int dispatcherId, Exception exception);

    [LoggerMessage(5, LogLevel.Critical, "Dispatcher {DispatcherId} stopped on an unrecoverable ring error.", EventName = "DispatcherFailed")]
    public static partial void DispatcherFailed(ILogger logger, int dispatcherId, Exception exception);

    [LoggerMessage(6, LogLevel.Debug, "Connection {ConnectionId} was reset by the peer.", EventName = "ConnectionReset")]
    public static partial void ConnectionReset(ILogger logger, string connectionId);

    // The socket transport's write-side connection events, under the same names and meaning (Debug, the reason given).
    [LoggerMessage(7, LogLevel.Debug, "Connection {ConnectionId} is sending FIN: {Reason}", EventName = "ConnectionWriteFin")]
    public static partial void ConnectionWriteFin(ILogger logger, string connectionId, string reason);

    [LoggerMessage(8, LogLevel.Debug, "Connection {ConnectionId} is sending RST: {Reason}", EventName = "ConnectionWriteRst")]
    public static partial void ConnectionWriteRst(ILogger logger, string connectionId, string reason);

    [LoggerMessage(9, LogLevel.Debug, "Connection {ConnectionId} communication error: {Operation} failed with {Error}.", EventName = "ConnectionError")]
    public static partial void ConnectionError(ILogger logger, string connectionId, string operation, string error, Exception? exception);

    /// <summary><see cref="ConnectionError(ILogger, string, string, string, Exception?)"/> where only the error's text is at hand.</summary>
    public static void ConnectionError(ILogger logger, string connectionId, string operation, string error)
        => ConnectionError(logger, connectionId, operation, error, exception: null);

    [LoggerMessage(10, LogLevel.Warning, "Accept on {EndPoint} failed with {Error}; retrying in {DelayMs} ms.", EventName = "AcceptRetry")]
    public static partial void AcceptRetry(ILogger logger, string endPoint, string error, int delayMs);

    [LoggerMessage(11, LogLevel.Warning, "The completion queue of dispatcher {DispatcherId} ({Count} entries) is full; the kernel holds further completions back until it has room, which delays them. A larger CompletionQueueSize avoids this.", EventName = "CompletionQueueOverflow")]
    public static partial void CompletionQueueOverflow(ILogger logger, int dispatcherId, uint count);

    [LoggerMessage(12, LogLevel.Debug, "Dispatcher {DispatcherId} runs without ring feature {Feature}: the kernel refused it or an option switched it off.", EventName = "RingFeatureRefused")]
    public static partial void RingFeatureRefused(ILogger logger, int dispatcherId, string feature);

    [LoggerMessage(13, LogLevel.Debug, "A completion arrived for an operation that is no longer tracked (user data {UserData:x}); it is ignored.", EventName = "StaleCompletion")]
    public static partial void StaleCompletion(ILogger logger, ulong userData);

    [LoggerMessage(14, LogLevel.Error, "A ConnectionClosed callback of connection {ConnectionId} threw.", EventName = "ConnectionClosedCallbackFault")]
    public static partial void ConnectionClosedCallbackFault(ILogger logger, string connectionId, Exception exception);

    // The socket transport's receive-side connection events, under the same names, so log filters keep working.
    [LoggerMessage(15, LogLevel.Debug, "Connection {ConnectionId} received FIN.", EventName = "ConnectionReadFin")]
    public static partial void ConnectionReadFin(ILogger logger, string connectionId);

    [LoggerMessage(16, LogLevel.Debug, "Connection {ConnectionId} paused: its input holds MaxReadBufferSize bytes the application has not consumed.", EventName = "ConnectionPause")]
    public static partial void ConnectionPause(ILogger logger, string connectionId);

    [LoggerMessage(17, LogLevel.Debug, "Connection {ConnectionId} resumed receiving.", EventName = "ConnectionResume")]
    public static partial void ConnectionResume(ILogger logger, string connectionId);

    [LoggerMessage(EventId = 18, EventName = "SocketTransportReplaced", Message = "The KestrelProactor hosting startup (ASPNETCORE_HOSTINGSTARTUPASSEMBLIES) serves Kestrel's endpoints with the proactor transport in place of the socket transport the application registered; remove it from that list to keep the socket transport. {Consequence}")]
    public static partial void SocketTransportReplaced(ILogger logger, LogLevel level, string consequence);
}
