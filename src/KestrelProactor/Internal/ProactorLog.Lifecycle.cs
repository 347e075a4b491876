using Microsoft.Extensions.Logging;

namespace KestrelProactor.Internal;

/// <summary>The transport's lifecycle events: stops that run out of time, dispatchers that end under their owners.</summary>
internal static partial class ProactorLog
{
    [LoggerMessage(40, LogLevel.Warning, "Dispatcher {DispatcherId} still had {Owners} connections or listeners {TimeoutSeconds} s after the stop began; they are released now.", EventName = "DispatcherStopTimedOut")]
    public static partial void DispatcherStopTimedOut(ILogger logger, int dispatcherId, int owners, int timeoutSeconds);

    [LoggerMessage(41, LogLevel.Warning, "{Owner} was released by dispatcher {DispatcherId} while the kernel may still use its memory; that memory is kept out of the pool for the life of the process.", EventName = "MemoryKeptForKernel")]
    public static partial void MemoryKeptForKernel(ILogger logger, int dispatcherId, string owner);
}
