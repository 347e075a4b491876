namespace KestrelProactor.Iocp;

/// <summary>A completion port or Winsock call failed while the backend was set up or running; carries the Win32 error.</summary>
internal sealed class IocpException(string message, int error) : Exception(message)
{
    public int Error { get; } = error;
}
