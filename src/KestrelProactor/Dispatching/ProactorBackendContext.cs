using System.Buffers;
using KestrelProactor.Internal;
using Microsoft.Extensions.Logging;

namespace KestrelProactor.Dispatching;

/// <summary>What a backend needs from the factory that starts it. One per backend start.</summary>
internal sealed record ProactorBackendContext(
    ProactorTransportOptions Options,
    ILogger Logger,
    ProactorMetrics Metrics,
    Func<MemoryPool<byte>> MemoryPoolFactory)
{
    /// <summary>The pools this backend's dispatchers hold, counted by instance so each is disposed once.</summary>
    public ProactorMemoryPools MemoryPools { get; } = new(MemoryPoolFactory);
}
