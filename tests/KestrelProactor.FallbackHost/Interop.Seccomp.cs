using System.Runtime.InteropServices;

namespace KestrelProactor.FallbackHost;

/// <summary>The few Linux calls the host needs to deny io_uring to itself. x86_64 only.</summary>
internal static unsafe partial class Interop
{
    internal static partial class Seccomp
    {
        public const int PR_SET_NO_NEW_PRIVS = 38;
        public const nint SYS_seccomp = 317;
        public const nint SYS_io_uring_setup = 425;
        public const nint SYS_io_uring_enter = 426;
        public const nint SYS_io_uring_register = 427;
        public const nint SECCOMP_SET_MODE_FILTER = 1;
        public const nint SECCOMP_FILTER_FLAG_TSYNC = 1;
        public const uint SECCOMP_RET_ALLOW = 0x7fff0000;
        public const uint SECCOMP_RET_ERRNO = 0x00050000;
        public const uint AUDIT_ARCH_X86_64 = 0xC000003E;

        // Classic BPF opcodes (linux/bpf_common.h).
        public const ushort BPF_LD_W_ABS = 0x00 | 0x00 | 0x20;
        public const ushort BPF_JMP_JEQ_K = 0x05 | 0x10 | 0x00;
        public const ushort BPF_RET_K = 0x06 | 0x00;
        public const ushort BPF_ALU_AND_K = 0x04 | 0x50 | 0x00;

        // Offsets into struct seccomp_data.
        public const uint SeccompDataNr = 0;
        public const uint SeccompDataArch = 4;
        public const uint SeccompDataArgs = 16; // u64 args[6]; the low half of each comes first (little endian)

        [StructLayout(LayoutKind.Sequential, Size = 8)]
        public struct sock_filter
        {
            public ushort code;
            public byte jt;
            public byte jf;
            public uint k;

            public sock_filter(ushort code, byte jt, byte jf, uint k)
            {
                this.code = code;
                this.jt = jt;
                this.jf = jf;
                this.k = k;
            }
        }

        [StructLayout(LayoutKind.Sequential, Size = 16)]
        public struct sock_fprog
        {
            public ushort len;
            public sock_filter* filter;
        }

        [LibraryImport("libc", SetLastError = true)]
        public static partial int prctl(int option, nuint arg2, nuint arg3, nuint arg4, nuint arg5);

        // syscall(2) is variadic; on x86_64 integer arguments travel in the same registers either way.
        [LibraryImport("libc", EntryPoint = "syscall", SetLastError = true)]
        public static partial nint syscall(nint number, nint arg1, nint arg2, void* arg3);

        [LibraryImport("libc", SetLastError = true)]
        public static partial int close(int fd);
    }
}
