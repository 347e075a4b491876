namespace KestrelProactor.Tests.Infrastructure;

/// <summary>What a test's listener binds and its clients connect to.</summary>
public enum TransportEndpoint
{
    /// <summary>TCP on 127.0.0.1, port chosen by the kernel.</summary>
    Tcp,

    /// <summary>A Unix domain socket at a path in a fresh temporary directory (<see cref="UnixSocketPath"/>).</summary>
    Unix,
}

/// <summary>
/// The theory data of the contract and end-to-end suites: every <see cref="TransportKind"/> (the socket transport
/// and each proactor preset) over each <see cref="TransportEndpoint"/>. A test about TCP itself (ports, IPv6,
/// TCP_NODELAY, RST) or one that binds an endpoint of its own takes <see cref="Presets"/>, every kind over TCP:
/// a Unix socket has no port and no RST, so those tests say nothing about it.
/// Under Wine (the Windows run) the kinds stay <see cref="TransportFactories.Kinds"/> (the IOCP backend has none
/// of the io_uring presets' options) and the endpoint TCP (Wine has no AF_UNIX).
/// </summary>
internal static class TransportMatrix
{
    public static TransportKind[] Kinds => OperatingSystem.IsWindows() ? TransportFactories.Kinds : Enum.GetValues<TransportKind>();

    public static TransportEndpoint[] Endpoints => OperatingSystem.IsWindows() ? [TransportEndpoint.Tcp] : Enum.GetValues<TransportEndpoint>();

    /// <summary>Every kind over every endpoint.</summary>
    public static TheoryData<TransportKind, TransportEndpoint> All
    {
        get
        {
            var data = new TheoryData<TransportKind, TransportEndpoint>();
            foreach ((TransportKind kind, TransportEndpoint endpoint) in Cases)
            {
                data.Add(kind, endpoint);
            }

            return data;
        }
    }

    /// <summary>Every kind, over TCP.</summary>
    public static TheoryData<TransportKind> Presets => new(Kinds);

    /// <summary>The pairs of <see cref="All"/>, for theory data that crosses them with a dimension of its own.</summary>
    public static IEnumerable<(TransportKind Kind, TransportEndpoint Endpoint)> Cases
        => Kinds.SelectMany(kind => Endpoints.Select(endpoint => (kind, endpoint)));
}
