using System.Runtime.InteropServices;

namespace KestrelProactor.Tests.Infrastructure;

/// <summary>Where the tests run: Linux natively, or a Windows build under Wine (tests/windows/run-under-wine.sh).</summary>
internal static class TestHost
{
    private static readonly Lazy<bool> s_isWine = new(DetectWine);

    /// <summary>True under Wine: its ntdll exports <c>wine_get_version</c>, Windows' does not.</summary>
    public static bool IsWine => s_isWine.Value;

    /// <summary>
    /// Scales a stress payload for the host: Wine's round trips are about ten times slower than native ones, so
    /// under Wine stress bodies are a quarter of their Linux size (still far above every buffer and threshold).
    /// </summary>
    public static long StressBytes(long linuxBytes) => IsWine ? linuxBytes / 4 : linuxBytes;

    private static bool DetectWine()
        => OperatingSystem.IsWindows()
           && NativeLibrary.TryLoad("ntdll.dll", out nint ntdll)
           && NativeLibrary.TryGetExport(ntdll, "wine_get_version", out _);

    /// <summary>
    /// Wine reads end-of-stream, not a reset, from a socket whose RST was processed before the receive was issued
    /// (Windows fails that receive with WSAECONNRESET); WineDeviationTests checks this is still so.
    /// </summary>
    public const string WineResetBeforeReceive =
        "Wine reads end-of-stream instead of WSAECONNRESET from a socket whose peer's RST arrived before the receive was issued (WineDeviationTests pins this down), and this test races the reset against that receive; resets that meet a pending receive are covered (Input_PeerResetsDuringPendingRead, the IOCP abort test).";

    public const string WineNoCngEcdsa =
        "Wine's CNG cannot create the test certificate's ECDSA key (NTE_NOT_SUPPORTED), so TLS is not covered under Wine.";
}
