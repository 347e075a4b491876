using System.Runtime.InteropServices;

namespace KestrelProactor.Iocp;

/// <summary>
/// Zeroed native memory that the kernel writes into while an operation is in flight (an OVERLAPPED and what goes
/// with it). It never moves, and it is freed only by its owner once the operation's completion has been dequeued;
/// a block whose operation might still be in flight when the backend goes away is leaked on purpose
/// (<see cref="SafeHandle.SetHandleAsInvalid"/>) rather than freed under the kernel.
/// </summary>
internal sealed unsafe class IocpNativeBlock : SafeHandle
{
    public IocpNativeBlock(int size) : base(invalidHandleValue: 0, ownsHandle: true)
    {
        SetHandle((nint)NativeMemory.AllocZeroed((nuint)size));
        Size = size;
    }

    public int Size { get; }

    public byte* Pointer => (byte*)handle;

    public override bool IsInvalid => handle == 0;

    protected override bool ReleaseHandle()
    {
        NativeMemory.Free((void*)handle);
        return true;
    }
}
