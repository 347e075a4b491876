using System.Text.RegularExpressions;
using KestrelProactor.Internal;
using Microsoft.AspNetCore.Connections;

namespace KestrelProactor.Tests.Infrastructure;

/// <summary>
/// The options behind the presets that are more than a flag (<see cref="TransportFactories.Configure"/> sets the
/// rest), each in one place, so a preset follows when an option's allowed range or shape changes.
/// </summary>
internal static class TransportPresets
{
    private static readonly Lazy<int> s_zeroCopySendThreshold = new(SmallestValidZeroCopySendThreshold);

    /// <summary>
    /// The smallest <see cref="ProactorTransportOptions.ZeroCopySendThreshold"/> the options validator accepts
    /// (1024 today), so that every send of that size or more is a zero-copy send. Asked of the validator rather
    /// than written down, so the preset reaches 1 if the minimum is lowered.
    /// </summary>
    public static int ZeroCopySendThreshold => s_zeroCopySendThreshold.Value;

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

    private static int SmallestValidZeroCopySendThreshold()
    {
        for (int threshold = 1; threshold <= 1 << 16; threshold++)
        {
            if (!ProactorOptionsValidator.TryGetError(new ProactorTransportOptions { ZeroCopySendThreshold = threshold }, out _, out _, out _))
            {
                return threshold;
            }
        }

        throw new InvalidOperationException("The options validator accepts no ZeroCopySendThreshold up to 64 KiB.");
    }
}
