using System.Runtime.InteropServices;
using static KestrelProactor.Interop.Linux.Interop;

namespace KestrelProactor.IoUring;

/// <summary>
/// Owns a Linux file descriptor: a ring, an eventfd or an accepted socket. Closing goes through the ring
/// (<c>IORING_OP_CLOSE</c>) for sockets; <see cref="SafeHandle.SetHandleAsInvalid"/> then hands ownership to it.
/// </summary>
internal sealed class SafeFileDescriptorHandle : SafeHandle
{
    public SafeFileDescriptorHandle() : base(invalidHandleValue: -1, ownsHandle: true)
    {
    }

    public SafeFileDescriptorHandle(int fd) : base(invalidHandleValue: -1, ownsHandle: true)
    {
        SetHandle(fd);
    }

    public override bool IsInvalid => handle == -1;

    /// <summary>The descriptor; valid while the handle is not closed.</summary>
    public int Fd => (int)handle;

    protected override bool ReleaseHandle() => Sys.close((int)handle) == 0;
}
