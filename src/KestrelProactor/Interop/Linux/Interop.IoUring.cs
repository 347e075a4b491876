using System.Runtime.InteropServices;

namespace KestrelProactor.Interop.Linux;

/// <summary>
/// io_uring's kernel ABI (include/uapi/linux/io_uring.h): the three system calls, the structs they share with
/// user space, and the constants this transport uses. Sizes are fixed by the kernel and checked by tests.
/// </summary>
internal static unsafe partial class Interop
{
    internal static partial class IoUring
    {
        // The io_uring system call numbers are the same on every architecture (they were added after the
        // numbering was unified).
        public const long SysIoUringSetup = 425;
        public const long SysIoUringEnter = 426;
        public const long SysIoUringRegister = 427;

        // Setup flags.
        public const uint IORING_SETUP_SQPOLL = 1u << 1;
        public const uint IORING_SETUP_CQSIZE = 1u << 3;
        public const uint IORING_SETUP_CLAMP = 1u << 4;
        public const uint IORING_SETUP_SUBMIT_ALL = 1u << 7;
        public const uint IORING_SETUP_COOP_TASKRUN = 1u << 8;
        public const uint IORING_SETUP_TASKRUN_FLAG = 1u << 9;
        public const uint IORING_SETUP_SINGLE_ISSUER = 1u << 12;
        public const uint IORING_SETUP_DEFER_TASKRUN = 1u << 13;

        // Feature flags reported by setup.
        public const uint IORING_FEAT_SINGLE_MMAP = 1u << 0;
        public const uint IORING_FEAT_NODROP = 1u << 1;
        public const uint IORING_FEAT_SUBMIT_STABLE = 1u << 2;
        public const uint IORING_FEAT_FAST_POLL = 1u << 5;
        public const uint IORING_FEAT_EXT_ARG = 1u << 8;

        // Enter flags.
        public const uint IORING_ENTER_GETEVENTS = 1u << 0;
        public const uint IORING_ENTER_SQ_WAKEUP = 1u << 1;
        public const uint IORING_ENTER_SQ_WAIT = 1u << 2;
        public const uint IORING_ENTER_EXT_ARG = 1u << 3;
        public const uint IORING_ENTER_REGISTERED_RING = 1u << 4;

        // SQ ring flags (kernel-written).
        public const uint IORING_SQ_NEED_WAKEUP = 1u << 0;
        public const uint IORING_SQ_CQ_OVERFLOW = 1u << 1;
        public const uint IORING_SQ_TASKRUN = 1u << 2;

        // mmap offsets.
        public const long IORING_OFF_SQ_RING = 0;
        public const long IORING_OFF_CQ_RING = 0x8000000;
        public const long IORING_OFF_SQES = 0x10000000;

        // Opcodes (enum io_uring_op).
        public const byte IORING_OP_NOP = 0;
        public const byte IORING_OP_POLL_ADD = 6;
        public const byte IORING_OP_SENDMSG = 9;
        public const byte IORING_OP_ACCEPT = 13;
        public const byte IORING_OP_ASYNC_CANCEL = 14;
        public const byte IORING_OP_CLOSE = 19;
        public const byte IORING_OP_READ = 22;
        public const byte IORING_OP_SEND = 26;
        public const byte IORING_OP_RECV = 27;
        public const byte IORING_OP_SHUTDOWN = 34;
        public const byte IORING_OP_MSG_RING = 40;
        public const byte IORING_OP_SEND_ZC = 47;
        public const byte IORING_OP_SENDMSG_ZC = 48;
        public const byte IORING_OP_LAST_KNOWN = 58;

        // SQE flags.
        public const byte IOSQE_BUFFER_SELECT = 1 << 5;
        public const byte IOSQE_CQE_SKIP_SUCCESS = 1 << 6;

        // ioprio bits for accept and recv/send.
        public const ushort IORING_ACCEPT_MULTISHOT = 1 << 0;
        public const ushort IORING_RECVSEND_POLL_FIRST = 1 << 0;
        public const uint IORING_NOP_INJECT_RESULT = 1u << 0; // in op_flags; the result in len (6.10+)
        public const ushort IORING_RECV_MULTISHOT = 1 << 1;

        // Cancel flags.
        public const uint IORING_ASYNC_CANCEL_ALL = 1u << 0;
        public const uint IORING_ASYNC_CANCEL_FD = 1u << 1;
        public const uint IORING_ASYNC_CANCEL_ANY = 1u << 2;

        // CQE flags.
        public const uint IORING_CQE_F_BUFFER = 1u << 0;
        public const uint IORING_CQE_F_MORE = 1u << 1;
        public const uint IORING_CQE_F_NOTIF = 1u << 3;
        public const int IORING_CQE_BUFFER_SHIFT = 16;

        // Register opcodes.
        public const uint IORING_REGISTER_PROBE = 8;
        public const uint IORING_REGISTER_RING_FDS = 20;
        public const uint IORING_UNREGISTER_RING_FDS = 21;
        public const uint IORING_REGISTER_PBUF_RING = 22;
        public const uint IORING_UNREGISTER_PBUF_RING = 23;

        public const ushort IO_URING_OP_SUPPORTED = 1;

        [StructLayout(LayoutKind.Sequential)]
        public struct io_sqring_offsets
        {
            public uint head;
            public uint tail;
            public uint ring_mask;
            public uint ring_entries;
            public uint flags;
            public uint dropped;
            public uint array;
            public uint resv1;
            public ulong user_addr;
        }

        [StructLayout(LayoutKind.Sequential)]
        public struct io_cqring_offsets
        {
            public uint head;
            public uint tail;
            public uint ring_mask;
            public uint ring_entries;
            public uint overflow;
            public uint cqes;
            public uint flags;
            public uint resv1;
            public ulong user_addr;
        }

        [StructLayout(LayoutKind.Sequential)]
        public struct io_uring_params
        {
            public uint sq_entries;
            public uint cq_entries;
            public uint flags;
            public uint sq_thread_cpu;
            public uint sq_thread_idle;
            public uint features;
            public uint wq_fd;
            public fixed uint resv[3];
            public io_sqring_offsets sq_off;
            public io_cqring_offsets cq_off;
        }

        /// <summary>A submission queue entry. The unions of the C struct are flattened to the members used here.</summary>
        [StructLayout(LayoutKind.Explicit, Size = 64)]
        public struct io_uring_sqe
        {
            [FieldOffset(0)] public byte opcode;
            [FieldOffset(1)] public byte flags;
            [FieldOffset(2)] public ushort ioprio;
            [FieldOffset(4)] public int fd;
            [FieldOffset(8)] public ulong off;          // also addr2
            [FieldOffset(16)] public ulong addr;        // also splice_off_in
            [FieldOffset(24)] public uint len;
            [FieldOffset(28)] public uint op_flags;     // msg_flags, accept_flags, cancel_flags, rw_flags, ...
            [FieldOffset(32)] public ulong user_data;
            [FieldOffset(40)] public ushort buf_index;  // also buf_group
            [FieldOffset(42)] public ushort personality;
            [FieldOffset(44)] public int file_index;    // also splice_fd_in, optlen
            [FieldOffset(48)] public ulong addr3;
            [FieldOffset(56)] public ulong pad2;
        }

        [StructLayout(LayoutKind.Sequential)]
        public struct io_uring_cqe
        {
            public ulong user_data;
            public int res;
            public uint flags;
        }

        [StructLayout(LayoutKind.Sequential)]
        public struct io_uring_probe_op
        {
            public byte op;
            public byte resv;
            public ushort flags;
            public uint resv2;
        }

        [StructLayout(LayoutKind.Sequential)]
        public struct io_uring_probe
        {
            public byte last_op;
            public byte ops_len;
            public ushort resv;
            public fixed uint resv2[3];
            // io_uring_probe_op ops[] follows.
        }

        [StructLayout(LayoutKind.Sequential)]
        public struct io_uring_buf_reg
        {
            public ulong ring_addr;
            public uint ring_entries;
            public ushort bgid;
            public ushort flags;
            public fixed ulong resv[3];
        }

        /// <summary>One entry of a provided buffer ring. The ring's tail is the <c>resv</c> field of entry 0.</summary>
        [StructLayout(LayoutKind.Sequential)]
        public struct io_uring_buf
        {
            public ulong addr;
            public uint len;
            public ushort bid;
            public ushort resv;
        }

        [StructLayout(LayoutKind.Sequential)]
        public struct io_uring_rsrc_update
        {
            public uint offset;
            public uint resv;
            public ulong data;
        }

        public static int Setup(uint entries, io_uring_params* p)
            => (int)Sys.syscall(SysIoUringSetup, (nint)entries, (nint)p, 0, 0, 0, 0);

        public static int Enter(int fd, uint toSubmit, uint minComplete, uint flags)
            => (int)Sys.syscall(SysIoUringEnter, fd, (nint)toSubmit, (nint)minComplete, (nint)flags, 0, 0);

        /// <summary>The extended argument of <c>io_uring_enter</c> (5.11+): here only for its timeout.</summary>
        [StructLayout(LayoutKind.Sequential)]
        public struct io_uring_getevents_arg
        {
            public ulong sigmask;
            public uint sigmask_sz;
            public uint min_wait_usec;
            public ulong ts;
        }

        [StructLayout(LayoutKind.Sequential)]
        public struct kernel_timespec
        {
            public long tv_sec;
            public long tv_nsec;
        }

        public static int Enter(int fd, uint toSubmit, uint minComplete, uint flags, io_uring_getevents_arg* arg)
            => (int)Sys.syscall(SysIoUringEnter, fd, (nint)toSubmit, (nint)minComplete, (nint)flags, (nint)arg, sizeof(io_uring_getevents_arg));

        public static int Register(int fd, uint opcode, void* arg, uint nrArgs)
            => (int)Sys.syscall(SysIoUringRegister, fd, (nint)opcode, (nint)arg, (nint)nrArgs, 0, 0);
    }
}
