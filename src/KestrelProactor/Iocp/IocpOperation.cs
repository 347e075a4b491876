using System.Runtime.InteropServices;
using KestrelProactor.Dispatching;
using static KestrelProactor.Interop.Windows.Interop;

namespace KestrelProactor.Iocp;

/// <summary>
/// The native part of one overlapped operation: 64 bytes that stay put while the kernel owns them. A dequeued
/// packet points at <see cref="Overlapped"/>, the first field; <see cref="UserData"/> right after it names the
/// owner and kind in the operation table, so a packet needs no managed lookup and no GC handle.
/// </summary>
[StructLayout(LayoutKind.Sequential)]
internal struct IocpOperationHeader
{
    public Kernel32.OVERLAPPED Overlapped;
    public ulong UserData;
    public Winsock.WSABUF Buffer;
    public uint Flags;
    public uint Bytes;
}

/// <summary>
/// One operation slot of an owner (a connection's receive, send, shutdown or close; a listener's accept). At most
/// one operation of each kind is in flight per owner, so each slot is reused for the owner's whole life. Overlapped
/// kinds own a native <see cref="IocpOperationHeader"/> (plus, for accepts, the address space AcceptEx fills).
/// </summary>
internal sealed unsafe class IocpOperation
{
    private readonly IocpNativeBlock? _block;

    public IocpOperation(IOperationOwner owner, OperationKind kind, int extraNativeBytes = 0, bool overlapped = true)
    {
        Owner = owner;
        Kind = kind;
        if (overlapped)
        {
            _block = new IocpNativeBlock(sizeof(IocpOperationHeader) + extraNativeBytes);
        }
    }

    public IOperationOwner Owner { get; }

    public OperationKind Kind { get; }

    public IocpOperationHeader* Header => (IocpOperationHeader*)_block!.Pointer;

    /// <summary>Native bytes after the header (the AcceptEx address buffer).</summary>
    public byte* Extra => _block!.Pointer + sizeof(IocpOperationHeader);

    /// <summary>Submitted and its completion not yet handled. A packet for an operation not in flight is dropped.</summary>
    public bool InFlight { get; set; }

    /// <summary>A receive waits for readiness with zero bytes before it rents pipe memory.</summary>
    public bool ZeroByte { get; set; }

    /// <summary>The last receive filled its whole buffer: the next one skips the zero-byte wait.</summary>
    public bool LastReceiveFilled { get; set; }

    /// <summary>The shared code asked to cancel this operation; a zero-byte receive that still succeeds ends there.</summary>
    public bool CancelRequested { get; set; }

    /// <summary>For an accept: the listen socket is associated with the dispatcher's port.</summary>
    public bool Associated { get; set; }

    /// <summary>For an accept: the port skips the listen socket's accepts that succeed at once (see <see cref="IocpSocketHandle.SkipsPortOnSuccess"/>).</summary>
    public bool SkipsPortOnSuccess { get; set; }

    /// <summary>For an accept: the socket AcceptEx fills, owned here until handed to the listener.</summary>
    public IocpSocketHandle? AcceptSocket { get; set; }

    /// <summary>For a result known at submission (skip-on-success, a synchronous call): handled from the work queue.</summary>
    public IoResult DeferredResult { get; set; }

    /// <summary>Its result is known and waits in the work queue: the OS is done with it and no packet will come.</summary>
    public bool DeferredPending { get; set; }

    /// <summary>Clears the OVERLAPPED for reuse and stamps the owner's current user data.</summary>
    public void Prepare()
    {
        IocpOperationHeader* header = Header;
        header->Overlapped = default;
        header->UserData = Owner.Token.ToUserData(Kind);
        header->Flags = 0;
        header->Bytes = 0;
    }

    /// <summary>The operation's OVERLAPPED status still says STATUS_PENDING: the OS has not finished it.</summary>
    private bool StatusPending => (uint)Header->Overlapped.Internal == NtStatus.STATUS_PENDING;

    /// <summary>For tests: the OS has finished the operation (its status left STATUS_PENDING), dequeued or not.</summary>
    internal bool FinishedInKernelForTests => !StatusPending;

    /// <summary>
    /// Whether the OS may still use this slot's native block: counted in flight, or its status still says pending (a
    /// check on our own memory that holds whatever the books say, e.g. a packet a drain took for a later submission).
    /// </summary>
    public bool MayBeInKernel
        => InFlight || (_block is { IsClosed: false } && StatusPending);

    /// <summary>At the end of the backend: frees the block when the OS is done with it, else keeps it for good. Returns 1 when kept.</summary>
    public int FreeOrKeep()
    {
        if (MayBeInKernel)
        {
            return Leak() ? 1 : 0;
        }

        Free();
        return 0;
    }

    /// <summary>Frees the native block; only once no operation of this slot can be in flight.</summary>
    public void Free()
    {
        AcceptSocket?.Dispose();
        AcceptSocket = null;
        _block?.Dispose();
    }

    /// <summary>
    /// Keeps the native block alive for good: the backend is going away with this operation maybe in flight. Returns
    /// whether there was a block to keep.
    /// </summary>
    public bool Leak()
    {
        _block?.SetHandleAsInvalid();
        return _block is not null;
    }
}
