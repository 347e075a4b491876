using Microsoft.Extensions.Logging;

namespace KestrelProactor.Internal;

/// <summary>The transport's lifecycle events: stops that run out of time, dispatchers that end under their owners.</summary>
internal static partial class ProactorLog
{
    [LoggerMessage(40, LogLevel.Warning, "Dispatcher {DispatcherId} still had {Owners} connections or listeners {TimeoutSeconds} s after the stop began; they are released now.", EventName = "DispatcherStopTimedOut")]
    public static partial void DispatcherStopTimedOut(ILogger logger, int dispatcherId, int owners, int timeoutSeconds);

    [LoggerMessage(41, LogLevel.Warning, "{Owner} was released by dispatcher {DispatcherId} while the kernel may still use its memory; that memory is kept out of the pool for the life of the process.", EventName = "MemoryKeptForKernel")]
    public static partial void MemoryKeptForKernel(ILogger logger, int dispatcherId, string owner);

    [LoggerMessage(42, LogLevel.Warning, "The dispatcher that accepted on {EndPoint} failed; dispatcher {DispatcherId} accepts there from now on.", EventName = "ListenerMoved")]
    public static partial void ListenerMoved(ILogger logger, string endPoint, int dispatcherId);

    [LoggerMessage(43, LogLevel.Error, "The dispatcher that accepted on {EndPoint} failed and no other can take the endpoint over; it is closed.", EventName = "ListenerClosedAfterFailure")]
    public static partial void ListenerClosedAfterFailure(ILogger logger, string endPoint);

    [LoggerMessage(44, LogLevel.Debug, "Dispatcher {DispatcherId} is pinned to CPU {Cpu}.", EventName = "DispatcherPinned")]
    public static partial void DispatcherPinned(ILogger logger, int dispatcherId, int cpu);

    [LoggerMessage(45, LogLevel.Warning, "Dispatcher {DispatcherId} could not be pinned to CPU {Cpu} ({Error}); it runs on any CPU the process may use.", EventName = "DispatcherAffinityFailed")]
    public static partial void DispatcherAffinityFailed(ILogger logger, int dispatcherId, int cpu, string error);
}
