using KestrelProactor;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Server.Kestrel.Transport.Sockets;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Options;

namespace KestrelProactor.Tests.Infrastructure;

/// <summary>
/// Tests of the transport contract run against Kestrel's socket transport too: a test that fails there is a
/// wrong test, not a transport bug.
/// </summary>
public enum TransportKind
{
    Sockets,
    Proactor,
    ProactorInline,
    ProactorSingleShot,

    /// <summary>The tier for kernels without buffer rings: single-shot receives straight into pipe memory.</summary>
    ProactorBasicTier,
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

    public static void Configure(TransportKind kind, ProactorTransportOptions options, Action<ProactorTransportOptions>? configure = null)
    {
        options.AllowSocketTransportFallback = false;
        options.DispatcherCount = 2;
        options.UnsafePreferInlineScheduling = kind == TransportKind.ProactorInline;
        options.DisableMultishot = kind is TransportKind.ProactorSingleShot or TransportKind.ProactorBasicTier;
        options.DisableBufferRing = kind == TransportKind.ProactorBasicTier;
        configure?.Invoke(options);
    }

    /// <summary>
    /// The kinds the shared tests run. Under Wine (the Windows run) only the IOCP kinds run: the socket-transport
    /// reference checks the tests themselves on Linux, and <see cref="TransportKind.ProactorSingleShot"/> is the same
    /// as <see cref="TransportKind.Proactor"/> on IOCP (it has no multishot operations), so they would only cost time.
    /// Set KESTRELPROACTOR_TEST_ALL_KINDS=1 to run every kind there too (to check a test against Wine's sockets).
    /// </summary>
    public static TransportKind[] Kinds => OperatingSystem.IsWindows() && Environment.GetEnvironmentVariable("KESTRELPROACTOR_TEST_ALL_KINDS") != "1"
        ? [TransportKind.Proactor, TransportKind.ProactorInline]
        : Enum.GetValues<TransportKind>();

    /// <summary>The native backend the proactor kinds must run on here: the run provably exercised it.</summary>
    public static string ExpectedBackend => OperatingSystem.IsWindows() ? "iocp" : "io_uring";

    public static TheoryData<TransportKind> All => new(Kinds);
}
