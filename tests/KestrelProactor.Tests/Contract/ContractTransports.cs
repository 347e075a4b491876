using KestrelProactor.Tests.Infrastructure;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Server.Kestrel.Transport.Sockets;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Options;

namespace KestrelProactor.Tests.Contract;

/// <summary>
/// Listener factories for the contract tests. Unlike <see cref="TransportFactories.Create"/>, the socket transport
/// also honours the options a test configures (the ones both transports share), so a test that depends on an
/// option, such as back-pressure or <c>NoDelay</c>, checks the same setting on both.
/// </summary>
internal static class ContractTransports
{
    public static IConnectionListenerFactory Create(TransportKind kind, Action<ProactorTransportOptions>? configure = null)
    {
        if (kind != TransportKind.Sockets)
        {
            return TransportFactories.Create(kind, configure);
        }

        ProactorTransportOptions shared = TransportFactories.CreateOptions(kind, configure);
        var socketOptions = new SocketTransportOptions
        {
            Backlog = shared.Backlog,
            NoDelay = shared.NoDelay,
            MaxReadBufferSize = shared.MaxReadBufferSize,
            MaxWriteBufferSize = shared.MaxWriteBufferSize,
            UnsafePreferInlineScheduling = shared.UnsafePreferInlineScheduling,
        };
        return new SocketTransportFactory(Options.Create(socketOptions), NullLoggerFactory.Instance);
    }

    public static bool IsProactor(TransportKind kind) => kind != TransportKind.Sockets;

    /// <summary>Every transport kind crossed with payload sizes on both sides of the usual buffer sizes.</summary>
    public static TheoryData<TransportKind, int> KindsAndPayloadSizes
    {
        get
        {
            int[] sizes = [1, 4095, 4096, 4097, 16384, 16385, 1024 * 1024];
            var data = new TheoryData<TransportKind, int>();
            foreach (TransportKind kind in Enum.GetValues<TransportKind>())
            {
                foreach (int size in sizes)
                {
                    data.Add(kind, size);
                }
            }

            return data;
        }
    }

    /// <summary>Every transport kind crossed with both values of a boolean option.</summary>
    public static TheoryData<TransportKind, bool> KindsAndBooleans
    {
        get
        {
            var data = new TheoryData<TransportKind, bool>();
            foreach (TransportKind kind in Enum.GetValues<TransportKind>())
            {
                data.Add(kind, true);
                data.Add(kind, false);
            }

            return data;
        }
    }
}
