namespace KestrelProactor.Internal;

/// <summary>
/// Checks <see cref="ProactorTransportOptions"/> at bind time; each message names the option and what it allows.
/// </summary>
internal static class ProactorOptionsValidator
{
    public static void Validate(ProactorTransportOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        Check(options.DispatcherCount is >= 1 and <= 256, nameof(options.DispatcherCount), options.DispatcherCount, "1 to 256");
        Check(IsPowerOfTwo(options.SubmissionQueueSize) && options.SubmissionQueueSize is >= 4 and <= 32768,
            nameof(options.SubmissionQueueSize), options.SubmissionQueueSize, "a power of two from 4 to 32768");
        Check(options.CompletionQueueSize == 0 ||
              (IsPowerOfTwo(options.CompletionQueueSize) && options.CompletionQueueSize >= options.SubmissionQueueSize && options.CompletionQueueSize <= 1 << 20),
            nameof(options.CompletionQueueSize), options.CompletionQueueSize,
            $"0 (automatic), or a power of two from {nameof(options.SubmissionQueueSize)} ({options.SubmissionQueueSize}) to 1048576");
        Check(IsPowerOfTwo(options.ReceiveBufferCount) && options.ReceiveBufferCount is >= 2 and <= 32768,
            nameof(options.ReceiveBufferCount), options.ReceiveBufferCount, "a power of two from 2 to 32768");
        Check(options.ReceiveBufferSize is >= 512 and <= 1 << 20, nameof(options.ReceiveBufferSize), options.ReceiveBufferSize, "512 to 1048576");
        Check(options.MaxReadBufferSize is null or >= 0, nameof(options.MaxReadBufferSize), options.MaxReadBufferSize, "null, 0 (unbounded) or a positive number of bytes");
        Check(options.MaxWriteBufferSize is null or >= 0, nameof(options.MaxWriteBufferSize), options.MaxWriteBufferSize, "null, 0 (unbounded) or a positive number of bytes");
        Check(options.ZeroCopySendThreshold == 0 || options.ZeroCopySendThreshold >= 1024,
            nameof(options.ZeroCopySendThreshold), options.ZeroCopySendThreshold, "0 (off), or 1024 bytes and more");
        Check(options.Backlog >= 1, nameof(options.Backlog), options.Backlog, "1 or more");
    }

    private static bool IsPowerOfTwo(int value) => value > 0 && (value & (value - 1)) == 0;

    private static void Check(bool valid, string name, object? value, string allowed)
    {
        if (!valid)
        {
            throw new ArgumentOutOfRangeException(
                $"{nameof(ProactorTransportOptions)}.{name}",
                value,
                $"{nameof(ProactorTransportOptions)}.{name} is {value?.ToString() ?? "null"}; allowed: {allowed}.");
        }
    }
}
