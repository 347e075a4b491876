using System.Text.RegularExpressions;
using KestrelProactor.Internal;
using Microsoft.AspNetCore.Connections;
using Microsoft.Extensions.DependencyInjection;

namespace KestrelProactor.Tests.Infrastructure;

/// <summary>
/// The options behind the presets that are more than a flag (<see cref="TransportFactories.Configure"/> sets the
/// rest), each in one place, so a preset follows when an option's allowed range or shape changes.
/// </summary>
internal static class TransportPresets
{
    /// <summary>
    /// <see cref="ProactorTransportOptions.ZeroCopySendThreshold"/> of 1: every send, down to a single byte, is a
    /// zero-copy send and waits for its notification before its memory goes back.
    /// </summary>
    public const int ZeroCopySendThreshold = 1;

    /// <summary>The shortest idle time the validator allows the submission-polling thread.</summary>
    public static readonly TimeSpan SubmissionQueuePollingIdle = TimeSpan.FromMilliseconds(1);

    public static void Apply(TransportKind kind, ProactorTransportOptions options)
    {
        switch (kind)
        {
            case TransportKind.ProactorZeroCopy:
                options.ZeroCopySendThreshold = ZeroCopySendThreshold;
                break;
            case TransportKind.ProactorPolling:
                options.SubmissionQueuePolling = true;
                options.SubmissionQueuePollingIdle = SubmissionQueuePollingIdle;
                break;
            case TransportKind.ProactorTinyRings:
                options.SubmissionQueueSize = 4;
                options.ReceiveBufferCount = 2;
                break;
            case TransportKind.ProactorFinOnError:
                options.FinOnError = true;
                break;
            case TransportKind.ProactorAcceptEverywhere:
                options.AcceptOnEveryDispatcher = true;
                break;
        }
    }

    /// <summary>
    /// Fails when a bound factory runs without its preset's kernel feature: a kernel that refuses one (SQPOLL,
    /// SEND_ZC) gets a backend that goes on without it, and every test of that preset would pass as the default.
    /// Checked in the backend's feature summary (io_uring only; the IOCP kinds have no such preset).
    /// </summary>
    public static void AssertInEffect(TransportKind kind, IConnectionListenerFactory factory)
    {
        if (!OperatingSystem.IsLinux() || factory is not ProactorTransportFactory { Backend: { } backend })
        {
            return;
        }

        string features = backend.FeatureSummary;
        (bool inEffect, string what) = kind switch
        {
            TransportKind.ProactorSingleShot => (features.Contains("buffer-ring=") && !features.Contains("multishot-"), "a buffer ring without multishot"),
            TransportKind.ProactorBasicTier => (!features.Contains("buffer-ring=") && !features.Contains("multishot-"), "neither a buffer ring nor multishot"),
            TransportKind.ProactorOneDispatcher => (backend.Dispatchers.Length == 1, "one dispatcher"),
            TransportKind.ProactorZeroCopy => (features.Contains($"send-zc>={ZeroCopySendThreshold}"), "zero-copy sends"),
            TransportKind.ProactorPolling => (features.Contains("SQPOLL("), "a submission-polling thread"),
            TransportKind.ProactorTinyRings => (Regex.IsMatch(features, @"\bsq=4\b") && features.Contains("buffer-ring=2x"), "4-entry rings with 2 receive buffers"),
            _ => (true, ""),
        };
        Assert.True(inEffect, $"The {kind} preset runs without {what}: {features}");
    }

    /// <summary>
    /// A host of <paramref name="kind"/> bound what it should: plain Kestrel has no proactor factory; any other kind
    /// has exactly one, on the native backend (fallback is off), with its preset in effect.
    /// </summary>
    public static void AssertHostBound(TransportKind kind, IServiceProvider services)
    {
        var proactorFactories = services.GetServices<IConnectionListenerFactory>().OfType<ProactorTransportFactory>().ToArray();
        if (kind == TransportKind.Sockets)
        {
            Assert.Empty(proactorFactories);
            return;
        }

        var factory = Assert.Single(proactorFactories);
        Assert.True(
            factory.ActiveBackend == TransportFactories.ExpectedBackend,
            $"The proactor factory bound with '{factory.ActiveBackend}' (fallback reason: {factory.FallbackReason}).");
        AssertInEffect(kind, factory);
    }
}
