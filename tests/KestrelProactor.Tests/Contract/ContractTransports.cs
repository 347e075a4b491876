using System.Reflection;
using KestrelProactor.Tests.Infrastructure;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Server.Kestrel.Transport.Sockets;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Options;

namespace KestrelProactor.Tests.Contract;

/// <summary>
/// Listener factories for the contract tests. Unlike <see cref="TransportFactories.Create"/>, the socket transport
/// also honours the options a test configures (the ones both transports share), so a test that depends on an
/// option, such as back-pressure or <c>NoDelay</c>, checks the same setting on both; and either transport can be
/// given a tracking memory pool and a capturing logger.
/// </summary>
internal static class ContractTransports
{
    public static IConnectionListenerFactory Create(
        TransportKind kind,
        Action<ProactorTransportOptions>? configure = null,
        TrackingMemoryPool? memoryPool = null,
        ILoggerFactory? loggerFactory = null)
    {
        loggerFactory ??= NullLoggerFactory.Instance;
        if (kind != TransportKind.Sockets)
        {
            ProactorTransportOptions options = TransportFactories.CreateOptions(kind, configure);
            if (memoryPool is not null)
            {
                options.MemoryPoolFactory = () => memoryPool;
            }

            return new ProactorTransportFactory(Options.Create(options), loggerFactory);
        }

        ProactorTransportOptions shared = TransportFactories.CreateOptions(kind, configure);
        // The same mapping as the proactor's fallback to the socket transport.
        SocketTransportOptions socketOptions = ProactorTransportFactory.CreateFallbackSocketOptions(shared);
        if (memoryPool is not null)
        {
            SetSocketTransportMemoryPool(socketOptions, memoryPool);
        }

        if (shared.FinOnError)
        {
            SetSocketTransportFinOnError(socketOptions);
        }

        return new SocketTransportFactory(Options.Create(socketOptions), loggerFactory);
    }

    /// <summary>The socket transport's FIN-on-error is an internal option (its default is the AppContext switch).</summary>
    public static void SetSocketTransportFinOnError(SocketTransportOptions options)
    {
        PropertyInfo? property = typeof(SocketTransportOptions).GetProperty("FinOnError", BindingFlags.Instance | BindingFlags.NonPublic | BindingFlags.Public);
        Assert.SkipWhen(property is null, "This version of the socket transport has no FinOnError option to set.");
        property.SetValue(options, true);
    }

    /// <summary>
    /// The socket transport takes its pool from an internal option (Kestrel fills it from DI); setting it by
    /// reflection lets the pool tests check themselves against the socket transport.
    /// </summary>
    private static void SetSocketTransportMemoryPool(SocketTransportOptions options, IMemoryPoolFactory<byte> factory)
    {
        PropertyInfo? property = typeof(SocketTransportOptions).GetProperty("MemoryPoolFactory", BindingFlags.Instance | BindingFlags.NonPublic | BindingFlags.Public);
        Assert.SkipWhen(property is null || !property.PropertyType.IsAssignableFrom(factory.GetType()),
            "This version of the socket transport has no MemoryPoolFactory option to inject a tracking pool through.");
        property.SetValue(options, factory);
    }

    public static bool IsProactor(TransportKind kind) => kind != TransportKind.Sockets;

    /// <summary>Every kind and endpoint crossed with payload sizes on both sides of the usual buffer sizes.</summary>
    public static TheoryData<TransportKind, TransportEndpoint, int> KindsAndPayloadSizes
    {
        get
        {
            int[] sizes = [1, 4095, 4096, 4097, 16384, 16385, 1024 * 1024];
            var data = new TheoryData<TransportKind, TransportEndpoint, int>();
            foreach ((TransportKind kind, TransportEndpoint endpoint) in TransportMatrix.Cases)
            {
                foreach (int size in sizes)
                {
                    data.Add(kind, endpoint, size);
                }
            }

            return data;
        }
    }

    /// <summary>Every kind (over TCP) crossed with both values of a boolean option.</summary>
    public static TheoryData<TransportKind, bool> KindsAndBooleans
    {
        get
        {
            var data = new TheoryData<TransportKind, bool>();
            foreach (TransportKind kind in TransportMatrix.Kinds)
            {
                data.Add(kind, true);
                data.Add(kind, false);
            }

            return data;
        }
    }
}
