using System.Runtime.InteropServices;

namespace KestrelProactor.Interop.Linux;

/// <summary>
/// io_uring's ring restrictions (5.10+): a ring set up disabled accepts one list of what it may do (SQE opcodes,
/// SQE flags, register opcodes) and then, once enabled, refuses everything else with <c>EACCES</c>.
/// </summary>
internal static unsafe partial class Interop
{
    internal static partial class IoUring
    {
        /// <summary>The ring starts disabled: no submission until <see cref="IORING_REGISTER_ENABLE_RINGS"/>.</summary>
        public const uint IORING_SETUP_R_DISABLED = 1u << 6;

        // Register opcodes.
        public const uint IORING_REGISTER_PERSONALITY = 9;
        public const uint IORING_REGISTER_RESTRICTIONS = 11;
        public const uint IORING_REGISTER_ENABLE_RINGS = 12;

        // What one io_uring_restriction entry restricts (its opcode field).
        public const ushort IORING_RESTRICTION_REGISTER_OP = 0;
        public const ushort IORING_RESTRICTION_SQE_OP = 1;
        public const ushort IORING_RESTRICTION_SQE_FLAGS_ALLOWED = 2;
        public const ushort IORING_RESTRICTION_SQE_FLAGS_REQUIRED = 3;

        // Opcodes and SQE flags the transport never uses, named so tests can show a restricted ring refuses them.
        public const byte IORING_OP_OPENAT = 18;
        public const byte IOSQE_ASYNC = 1 << 4;

        /// <summary>One restriction. The C struct's union (register_op, sqe_op, sqe_flags) is one byte at offset 2.</summary>
        [StructLayout(LayoutKind.Explicit, Size = 16)]
        public struct io_uring_restriction
        {
            [FieldOffset(0)] public ushort opcode;
            [FieldOffset(2)] public byte value;
        }
    }
}
