namespace KestrelProactor.Internal;

/// <summary>
/// A backend's receive buffers that may be lent to the application: the kernel filled them, the input pipe
/// hands them to Kestrel without a copy, and they go back when Kestrel has consumed them.
/// </summary>
internal interface IReceiveBufferLender
{
    /// <summary>
    /// The whole buffer <paramref name="bufferId"/>; valid until it is returned. Taking the memory takes the buffer:
    /// from this call on the caller returns it, once, whatever happens next (even if it throws, or cannot use it).
    /// </summary>
    Memory<byte> GetMemory(int bufferId);

    /// <summary>
    /// The size of every buffer, for deciding whether to lend; asking it takes no buffer (a call to
    /// <see cref="GetMemory"/> for the buffer being delivered means the pipe took it).
    /// </summary>
    int BufferSize { get; }

    /// <summary>Gives a lent buffer back. Any thread; the backend re-provides it to the kernel on its own thread.</summary>
    void Return(int bufferId);

    /// <summary>True while lending more would leave the kernel too few buffers: new data is copied instead.</summary>
    bool ShouldCopy { get; }
}
