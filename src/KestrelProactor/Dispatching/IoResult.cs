using System.Net.Sockets;

namespace KestrelProactor.Dispatching;

/// <summary>
/// The outcome of one completed operation, the same for every backend: a byte count (or new descriptor) on
/// success, otherwise a <see cref="SocketError"/> plus the native code (an errno, a Win32 error) for logs.
/// </summary>
internal readonly struct IoResult
{
    private IoResult(int value, SocketError error, int nativeError, string? nativeName)
    {
        Value = value;
        Error = error;
        NativeError = nativeError;
        NativeName = nativeName;
    }

    /// <summary>Bytes transferred, or the accepted descriptor; 0 on error.</summary>
    public int Value { get; }

    public SocketError Error { get; }

    public int NativeError { get; }

    public string? NativeName { get; }

    public bool IsSuccess => Error == SocketError.Success;

    public static IoResult Success(int value) => new(value, SocketError.Success, 0, null);

    public static IoResult Failure(SocketError error, int nativeError, string nativeName) => new(0, error, nativeError, nativeName);

    public SocketException ToException() => new((int)Error, $"{NativeName} ({Error})");

    public override string ToString() => IsSuccess ? Value.ToString() : $"{NativeName} ({Error})";
}
