using System.Buffers;
using KestrelProactor.Internal;
using Microsoft.Extensions.Logging;

namespace KestrelProactor.Dispatching;

/// <summary>What a backend needs from the factory that starts it.</summary>
internal sealed record ProactorBackendContext(
    ProactorTransportOptions Options,
    ILogger Logger,
    ProactorMetrics Metrics,
    Func<MemoryPool<byte>> MemoryPoolFactory);
