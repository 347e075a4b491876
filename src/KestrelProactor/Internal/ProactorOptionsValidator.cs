using System.Diagnostics.CodeAnalysis;

namespace KestrelProactor.Internal;

/// <summary>
/// Checks <see cref="ProactorTransportOptions"/>: at bind time (<see cref="Validate"/>) and, through the options
/// system, when the host starts (<see cref="ProactorOptionsValidation"/>). Each message names the option, its value
/// and what it allows.
/// </summary>
internal static class ProactorOptionsValidator
{
    /// <summary>Throws <see cref="ArgumentOutOfRangeException"/> for the first option out of range.</summary>
    public static void Validate(ProactorTransportOptions options)
    {
        if (TryGetError(options, out string? name, out object? value, out string? message))
        {
            throw new ArgumentOutOfRangeException(name, value, message);
        }
    }

    /// <summary>Finds the first option out of range; <paramref name="message"/> is the text <see cref="Validate"/> throws with.</summary>
    public static bool TryGetError(
        ProactorTransportOptions options,
        [NotNullWhen(true)] out string? name,
        out object? value,
        [NotNullWhen(true)] out string? message)
    {
        ArgumentNullException.ThrowIfNull(options);
        foreach (Rule rule in Rules(options))
        {
            if (!rule.Valid)
            {
                name = $"{nameof(ProactorTransportOptions)}.{rule.Name}";
                value = rule.Value;
                message = $"{rule.Subject ?? $"{name} is {rule.Value?.ToString() ?? "null"}"}; allowed: {rule.Allowed}.";
                return true;
            }
        }

        (name, value, message) = (null, null, null);
        return false;
    }

    private static IEnumerable<Rule> Rules(ProactorTransportOptions options)
    {
        yield return new(options.DispatcherCount is >= 1 and <= 256, nameof(options.DispatcherCount), options.DispatcherCount, "1 to 256");
        yield return new(IsPowerOfTwo(options.SubmissionQueueSize) && options.SubmissionQueueSize is >= 4 and <= 32768,
            nameof(options.SubmissionQueueSize), options.SubmissionQueueSize, "a power of two from 4 to 32768");
        yield return new(options.CompletionQueueSize == 0 ||
              (IsPowerOfTwo(options.CompletionQueueSize) && options.CompletionQueueSize >= options.SubmissionQueueSize && options.CompletionQueueSize <= 1 << 20),
            nameof(options.CompletionQueueSize), options.CompletionQueueSize,
            $"0 (automatic), or a power of two from {nameof(options.SubmissionQueueSize)} ({options.SubmissionQueueSize}) to 1048576");
        yield return new(IsPowerOfTwo(options.ReceiveBufferCount) && options.ReceiveBufferCount is >= 2 and <= 32768,
            nameof(options.ReceiveBufferCount), options.ReceiveBufferCount, "a power of two from 2 to 32768");
        yield return new(options.ReceiveBufferSize is >= 512 and <= 1 << 20, nameof(options.ReceiveBufferSize), options.ReceiveBufferSize, "512 to 1048576");
        yield return new(options.MaxReadBufferSize is null or >= 0, nameof(options.MaxReadBufferSize), options.MaxReadBufferSize, "null, 0 (unbounded) or a positive number of bytes");
        yield return new(options.MaxWriteBufferSize is null or >= 0, nameof(options.MaxWriteBufferSize), options.MaxWriteBufferSize, "null, 0 (unbounded) or a positive number of bytes");
        yield return new(options.OutputCoalescingDelay >= TimeSpan.Zero && options.OutputCoalescingDelay <= TimeSpan.FromMilliseconds(1),
            nameof(options.OutputCoalescingDelay), options.OutputCoalescingDelay, "0 (off) to 1 millisecond");
        yield return new(options.HandOffSpinTime >= TimeSpan.Zero && options.HandOffSpinTime <= TimeSpan.FromMilliseconds(1),
            nameof(options.HandOffSpinTime), options.HandOffSpinTime, "0 (off) to 1 millisecond");
        TimeSpan idle = options.SubmissionQueuePollingIdle;
        yield return new(idle >= TimeSpan.FromMilliseconds(1) && idle <= TimeSpan.FromSeconds(10) && idle.Ticks % TimeSpan.TicksPerMillisecond == 0,
            nameof(options.SubmissionQueuePollingIdle), idle, "1 millisecond to 10 seconds, in whole milliseconds");
        yield return new(options.ZeroCopySendThreshold >= 0,
            nameof(options.ZeroCopySendThreshold), options.ZeroCopySendThreshold, "0 (off), or a positive number of bytes");
        yield return new(options.Backlog >= 1, nameof(options.Backlog), options.Backlog, "1 or more");

        // Each io_uring dispatcher maps ReceiveBufferCount x ReceiveBufferSize for its buffer ring, and under load all
        // of it can be resident (lent to connections). Each value can be in range and the product still be more
        // memory than the process may have: say so at start, not as a failed mapping or an out-of-memory kill later.
        if (UsesBufferRings(options))
        {
            long ringBytes = (long)options.DispatcherCount * options.ReceiveBufferCount * options.ReceiveBufferSize;
            long available = GC.GetGCMemoryInfo().TotalAvailableMemoryBytes;
            yield return new(available <= 0 || ringBytes <= available,
                nameof(options.ReceiveBufferCount), ringBytes,
                $"at most the memory available to the process, {available} bytes ({available >> 20} MiB); lower {nameof(options.ReceiveBufferCount)}, {nameof(options.ReceiveBufferSize)} or {nameof(options.DispatcherCount)}",
                Subject: $"The receive buffer rings take {nameof(options.DispatcherCount)} x {nameof(options.ReceiveBufferCount)} x {nameof(options.ReceiveBufferSize)} = "
                    + $"{options.DispatcherCount} x {options.ReceiveBufferCount} x {options.ReceiveBufferSize} = {ringBytes} bytes ({ringBytes >> 20} MiB)");
        }
    }

    /// <summary>Buffer rings are io_uring's (Linux); the IOCP backend and the copying tier map none.</summary>
    private static bool UsesBufferRings(ProactorTransportOptions options) => OperatingSystem.IsLinux() && !options.DisableBufferRing;

    private static bool IsPowerOfTwo(int value) => value > 0 && (value & (value - 1)) == 0;

    /// <param name="Valid">Whether the option (or combination) is in range.</param>
    /// <param name="Name">The option named in the exception.</param>
    /// <param name="Value">Its value (for a combination, what the combination amounts to).</param>
    /// <param name="Allowed">What is allowed, in words.</param>
    /// <param name="Subject">What is out of range, when it is not one option's value ("{Name} is {Value}").</param>
    private readonly record struct Rule(bool Valid, string Name, object? Value, string Allowed, string? Subject = null);
}
