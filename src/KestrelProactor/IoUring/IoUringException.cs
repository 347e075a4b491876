namespace KestrelProactor.IoUring;

/// <summary>A ring-level failure (setup, mmap, register, enter), carrying the errno.</summary>
internal sealed class IoUringException : Exception
{
    public IoUringException(string message, int errno) : base(message)
    {
        Errno = errno;
    }

    public int Errno { get; }
}
