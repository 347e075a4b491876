using System.Buffers;
using KestrelProactor.Internal;
using Microsoft.Extensions.Logging;

namespace KestrelProactor.Dispatching;

/// <summary>
/// The memory pools of one backend's dispatchers, counted by instance. Each dispatcher takes a pool from the factory
/// when it is built and gives it back once nothing of it uses the pool (see
/// <see cref="ProactorDispatcher.ReleasePoolLease"/>). A factory may hand the same pool to several dispatchers (a
/// <see cref="ProactorTransportOptions.MemoryPoolFactory"/> that returns one shared pool): that pool is disposed once,
/// when the last dispatcher holding it gives it back, never under another dispatcher still using it.
/// <see cref="MemoryPool{T}.Shared"/> is nobody's and never disposed.
/// </summary>
internal sealed class ProactorMemoryPools(Func<MemoryPool<byte>> factory)
{
    private readonly Lock _gate = new();
    private readonly Dictionary<MemoryPool<byte>, int> _holders = new(ReferenceEqualityComparer.Instance);

    /// <summary>A pool from the factory, held once more by the caller until <see cref="Release"/>.</summary>
    public MemoryPool<byte> Acquire()
    {
        MemoryPool<byte> pool = factory();
        if (ReferenceEquals(pool, MemoryPool<byte>.Shared))
        {
            return pool;
        }

        lock (_gate)
        {
            _holders[pool] = _holders.GetValueOrDefault(pool) + 1;
        }

        return pool;
    }

    /// <summary>Gives back one hold on <paramref name="pool"/>; the last one disposes it.</summary>
    public void Release(MemoryPool<byte> pool, ILogger logger, int dispatcherId)
    {
        if (ReferenceEquals(pool, MemoryPool<byte>.Shared))
        {
            return;
        }

        lock (_gate)
        {
            int holders = _holders[pool] - 1;
            if (holders != 0)
            {
                _holders[pool] = holders;
                return;
            }

            _holders.Remove(pool);
        }

        try
        {
            pool.Dispose();
        }
        catch (Exception ex)
        {
            ProactorLog.WorkItemFault(logger, dispatcherId, ex);
        }
    }
}
