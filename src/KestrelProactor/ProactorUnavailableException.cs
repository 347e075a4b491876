namespace KestrelProactor;

/// <summary>
/// Thrown at bind time when the native proactor backend cannot be used and
/// <see cref="ProactorTransportOptions.AllowSocketTransportFallback"/> is <c>false</c>.
/// </summary>
public sealed class ProactorUnavailableException : Exception
{
    /// <summary>Creates the exception with the reason the backend is unavailable.</summary>
    public ProactorUnavailableException(string reason, Exception? innerException = null)
        : base($"The proactor transport cannot run here: {reason}", innerException)
    {
        Reason = reason;
    }

    /// <summary>Why the backend is unavailable (for example "io_uring_setup failed: EPERM").</summary>
    public string Reason { get; }
}
