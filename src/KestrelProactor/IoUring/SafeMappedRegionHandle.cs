using System.Runtime.InteropServices;
using static KestrelProactor.Interop.Linux.Interop;

namespace KestrelProactor.IoUring;

/// <summary>
/// Owns one mmap'ed region: a ring mapping, the SQE array, a buffer ring or the receive buffers behind it.
/// The kernel keeps its own reference to ring mappings, so unmapping after the ring fd is closed is safe.
/// </summary>
internal sealed unsafe class SafeMappedRegionHandle : SafeHandle
{
    private SafeMappedRegionHandle(nint address, nuint length) : base(invalidHandleValue: 0, ownsHandle: true)
    {
        SetHandle(address);
        Length = length;
    }

    public override bool IsInvalid => handle == 0;

    public nuint Length { get; }

    public byte* Pointer => (byte*)handle;

    /// <summary>Maps <paramref name="length"/> bytes of a ring at <paramref name="offset"/>, shared with the kernel.</summary>
    public static SafeMappedRegionHandle MapRing(int ringFd, nuint length, long offset)
    {
        void* address = Sys.mmap(null, length, Sys.PROT_READ | Sys.PROT_WRITE, Sys.MAP_SHARED | Sys.MAP_POPULATE, ringFd, offset);
        if (address == Sys.MAP_FAILED)
        {
            int errno = Marshal.GetLastPInvokeError();
            throw new IoUringException($"mmap of ring region at offset 0x{offset:x} failed: {Errno.Name(errno)}", errno);
        }

        return new SafeMappedRegionHandle((nint)address, length);
    }

    /// <summary>Maps zeroed, page-aligned anonymous memory (buffer rings and the buffers they hand out).</summary>
    public static SafeMappedRegionHandle MapAnonymous(nuint length)
    {
        void* address = Sys.mmap(null, length, Sys.PROT_READ | Sys.PROT_WRITE, Sys.MAP_PRIVATE | Sys.MAP_ANONYMOUS, -1, 0);
        if (address == Sys.MAP_FAILED)
        {
            int errno = Marshal.GetLastPInvokeError();
            throw new IoUringException($"mmap of {length} anonymous bytes failed: {Errno.Name(errno)}", errno);
        }

        return new SafeMappedRegionHandle((nint)address, length);
    }

    protected override bool ReleaseHandle() => Sys.munmap((void*)handle, Length) == 0;
}
