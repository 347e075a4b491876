using static KestrelProactor.Interop.Linux.Interop;
using static KestrelProactor.Interop.Linux.Interop.IoUring;

namespace KestrelProactor.IoUring;

/// <summary>
/// Each ring restricts itself to what the transport does with it. io_uring operations do not pass through the
/// seccomp filter a process runs under, which is why container runtimes deny io_uring outright; a ring that can
/// only accept, receive, send, shut down, close and cancel cannot be made (by a bug here, or by memory corruption
/// elsewhere in the process) to open, write, rename or unlink files, or to run any other of io_uring's operations.
/// (READ stays allowed for the wake-up eventfd, and works on any descriptor the process already holds.)
/// <para>
/// The ring is set up with <c>IORING_SETUP_R_DISABLED</c>; before its first enter, the allowed SQE opcodes, SQE
/// flags and register opcodes are registered (<c>IORING_REGISTER_RESTRICTIONS</c>, once per ring, for its whole life)
/// and the ring is enabled (<c>IORING_REGISTER_ENABLE_RINGS</c>). Anything else then completes with <c>-EACCES</c>.
/// Every opcode, flag and register call the backend uses must be in the lists below:
/// <c>RestrictionTests.AllowLists_CoverEverythingTheBackendUses</c> reads the backend's sources to check it.
/// </para>
/// </summary>
internal sealed unsafe partial class IoUringRing
{
    /// <summary>
    /// The SQE opcodes the dispatcher submits: the eventfd wake-up read, accept, receive, the basic tier's poll for
    /// data, the four kinds of send, shutdown, close, cancel, and the NOP of the ring tests.
    /// </summary>
    internal static ReadOnlySpan<byte> AllowedOperations =>
    [
        IORING_OP_NOP, IORING_OP_READ, IORING_OP_ACCEPT, IORING_OP_RECV, IORING_OP_POLL_ADD, IORING_OP_SEND, IORING_OP_SENDMSG,
        IORING_OP_SEND_ZC, IORING_OP_SENDMSG_ZC, IORING_OP_SHUTDOWN, IORING_OP_CLOSE, IORING_OP_ASYNC_CANCEL,
    ];

    /// <summary>The register calls made after the ring is enabled: the probe, the ring fd and the buffer ring.</summary>
    internal static ReadOnlySpan<uint> AllowedRegisterOperations =>
    [
        IORING_REGISTER_PROBE, IORING_REGISTER_RING_FDS, IORING_UNREGISTER_RING_FDS, IORING_REGISTER_PBUF_RING,
        IORING_UNREGISTER_PBUF_RING,
    ];

    /// <summary>The SQE flags the dispatcher sets: buffer selection for receives into the buffer ring.</summary>
    internal const byte AllowedSqeFlags = IOSQE_BUFFER_SELECT;

    /// <summary>True once the kernel holds this ring to the lists above.</summary>
    public bool IsRestricted { get; private set; }

    /// <summary>How many SQE opcodes the ring allows (those of the list this kernel knows).</summary>
    public int RestrictedOperationCount { get; private set; }

    /// <summary>Why the ring runs unrestricted, when it does (for the start-up line).</summary>
    public string? RestrictionsRefused { get; private set; }

    /// <summary>
    /// Restricts a ring set up disabled and enables it; a ring set up enabled (the kernel refused R_DISABLED) is left
    /// as it is. A refused restriction leaves the ring usable, unrestricted; a refused enable leaves it unusable and
    /// throws.
    /// </summary>
    private void RestrictAndEnable()
    {
        if ((Flags & IORING_SETUP_R_DISABLED) == 0)
        {
            RestrictionsRefused = "the kernel refused IORING_SETUP_R_DISABLED";
            return;
        }

        bool[] supported = ProbeOpcodes();
        int result = RegisterRestrictions(supported, AllowedRegisterOperations);
        if (result == -Errno.EINVAL)
        {
            // A kernel before 5.18 rejects the whole list for naming register opcodes it does not know (ring fds,
            // buffer rings); it could not register those anyway, so the list without them is the same guard.
            result = RegisterRestrictions(supported, [IORING_REGISTER_PROBE]);
        }

        int enabled = RegisterRaw(IORING_REGISTER_ENABLE_RINGS, null, 0);
        if (enabled < 0)
        {
            throw new IoUringException($"io_uring_register(ENABLE_RINGS) failed: {Errno.Name(-enabled)}", -enabled);
        }

        IsRestricted = result >= 0;
        RestrictionsRefused = IsRestricted ? null : $"io_uring_register(RESTRICTIONS) failed: {Errno.Name(-result)}";
    }

    private int RegisterRestrictions(bool[] supported, ReadOnlySpan<uint> registerOperations)
    {
        ReadOnlySpan<byte> operations = AllowedOperations;
        int capacity = operations.Length + registerOperations.Length + 1;
        io_uring_restriction* restrictions = stackalloc io_uring_restriction[capacity];
        new Span<io_uring_restriction>(restrictions, capacity).Clear();
        int count = 0;
        int operationCount = 0;
        foreach (byte operation in operations)
        {
            // An opcode this kernel does not have (zero-copy sends before 6.0) is not used, and naming one it does
            // not know would make it reject the whole list.
            if (supported[operation])
            {
                restrictions[count].opcode = IORING_RESTRICTION_SQE_OP;
                restrictions[count++].value = operation;
                operationCount++;
            }
        }

        foreach (uint registerOperation in registerOperations)
        {
            restrictions[count].opcode = IORING_RESTRICTION_REGISTER_OP;
            restrictions[count++].value = (byte)registerOperation;
        }

        // Without this entry no flag at all would be allowed.
        restrictions[count].opcode = IORING_RESTRICTION_SQE_FLAGS_ALLOWED;
        restrictions[count++].value = AllowedSqeFlags;

        int result = RegisterRaw(IORING_REGISTER_RESTRICTIONS, restrictions, (uint)count);
        RestrictedOperationCount = result >= 0 ? operationCount : 0;
        return result;
    }
}
