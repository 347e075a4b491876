using KestrelProactor;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Server.Kestrel.Transport.Sockets;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Options;

namespace KestrelProactor.Tests.Infrastructure;

/// <summary>
/// A transport and the options it runs with: Kestrel's socket transport as the reference (a test that fails there
/// is a wrong test, not a transport bug), or the proactor under one preset. Each proactor preset changes one thing
/// from <see cref="Proactor"/>, so a failure names the option that caused it. The contract and end-to-end suites
/// run every kind (<see cref="TransportMatrix"/>); the other suites pick the kinds they need.
/// </summary>
public enum TransportKind
{
    Sockets,

    /// <summary>The proactor's defaults, but with two dispatchers (the machine's core count would vary by host).</summary>
    Proactor,

    /// <summary><see cref="ProactorTransportOptions.UnsafePreferInlineScheduling"/>: pipe continuations on the dispatcher.</summary>
    ProactorInline,

    /// <summary>The ring tier: a provided buffer ring, but single-shot accepts and receives (no multishot).</summary>
    ProactorSingleShot,

    /// <summary>The tier for kernels without buffer rings: single-shot receives straight into pipe memory.</summary>
    ProactorBasicTier,

    /// <summary>One dispatcher for every listener and connection.</summary>
    ProactorOneDispatcher,

    /// <summary>Zero-copy for every send, of any size (<see cref="TransportPresets.ZeroCopySendThreshold"/> = 1).</summary>
    ProactorZeroCopy,

    /// <summary>A submission-polling kernel thread per ring, sleeping after the shortest idle time allowed.</summary>
    ProactorPolling,

    /// <summary>The smallest rings the options allow: 4 submission entries, 2 receive buffers per dispatcher.</summary>
    ProactorTinyRings,

    /// <summary>An aborted connection ends with FIN instead of RST (<see cref="ProactorTransportOptions.FinOnError"/>).</summary>
    ProactorFinOnError,

    /// <summary>A listen socket per dispatcher for each TCP endpoint (<see cref="ProactorTransportOptions.AcceptOnEveryDispatcher"/>).</summary>
    ProactorAcceptEverywhere,
}

internal static class TransportFactories
{
    public static IConnectionListenerFactory Create(TransportKind kind, Action<ProactorTransportOptions>? configure = null)
    {
        if (kind == TransportKind.Sockets)
        {
            var socketOptions = new SocketTransportOptions();
            return new SocketTransportFactory(Options.Create(socketOptions), NullLoggerFactory.Instance);
        }

        return new ProactorTransportFactory(Options.Create(CreateOptions(kind, configure)), NullLoggerFactory.Instance);
    }

    /// <summary>Proactor options for a kind; fallback is off, so a test can only pass on the native backend.</summary>
    public static ProactorTransportOptions CreateOptions(TransportKind kind, Action<ProactorTransportOptions>? configure = null)
    {
        var options = new ProactorTransportOptions();
        Configure(kind, options, configure);
        return options;
    }

    /// <summary>Applies a kind's preset, then <paramref name="configure"/>, which a test uses for what it is about.</summary>
    public static void Configure(TransportKind kind, ProactorTransportOptions options, Action<ProactorTransportOptions>? configure = null)
    {
        options.AllowSocketTransportFallback = false;
        options.DispatcherCount = kind == TransportKind.ProactorOneDispatcher ? 1 : 2;
        options.UnsafePreferInlineScheduling = kind == TransportKind.ProactorInline;
        options.DisableMultishot = kind is TransportKind.ProactorSingleShot or TransportKind.ProactorBasicTier;
        options.DisableBufferRing = kind == TransportKind.ProactorBasicTier;
        TransportPresets.Apply(kind, options);
        configure?.Invoke(options);
    }

    /// <summary>
    /// The kinds the other suites (reliability, fault injection) run for "every kind": the tiers and scheduling
    /// modes. The contract and end-to-end suites run every preset (<see cref="TransportMatrix"/>).
    /// Under Wine (the Windows run) only the IOCP kinds run: the socket-transport reference checks the tests
    /// themselves on Linux, and <see cref="TransportKind.ProactorSingleShot"/> is the same as
    /// <see cref="TransportKind.Proactor"/> on IOCP (it has no multishot operations), so they would only cost time.
    /// Set KESTRELPROACTOR_TEST_ALL_KINDS=1 to run all five there too (to check a test against Wine's sockets).
    /// </summary>
    public static TransportKind[] Kinds => OperatingSystem.IsWindows() && Environment.GetEnvironmentVariable("KESTRELPROACTOR_TEST_ALL_KINDS") != "1"
        ? [TransportKind.Proactor, TransportKind.ProactorInline]
        : [TransportKind.Sockets, TransportKind.Proactor, TransportKind.ProactorInline, TransportKind.ProactorSingleShot, TransportKind.ProactorBasicTier];

    /// <summary>The native backend the proactor kinds must run on here: the run provably exercised it.</summary>
    public static string ExpectedBackend => OperatingSystem.IsWindows() ? "iocp" : "io_uring";

    public static TheoryData<TransportKind> All => new(Kinds);

    /// <summary>Whether receives of this kind take buffers from a provided buffer ring (io_uring, not the basic tier).</summary>
    public static bool UsesBufferRing(TransportKind kind)
        => OperatingSystem.IsLinux() && kind is not (TransportKind.Sockets or TransportKind.ProactorBasicTier);
}
