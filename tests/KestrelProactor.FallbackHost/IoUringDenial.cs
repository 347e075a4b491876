using System.Runtime.InteropServices;
using static KestrelProactor.FallbackHost.Interop.Seccomp;

namespace KestrelProactor.FallbackHost;

/// <summary>
/// Installs a seccomp filter that makes io_uring_setup, io_uring_enter and io_uring_register fail with a chosen
/// errno in every thread of the process, the way a container runtime's profile or a hardened kernel would.
/// </summary>
internal static unsafe class IoUringDenial
{
    public static int ParseErrno(string name) => name.ToUpperInvariant() switch
    {
        "EPERM" => 1,
        "ENOSYS" => 38,
        "EACCES" => 13,
        _ => throw new ArgumentException($"Unknown errno '{name}': use EPERM, ENOSYS or EACCES.", nameof(name)),
    };

    public static void Install(int errno)
    {
        if (!OperatingSystem.IsLinux() || RuntimeInformation.ProcessArchitecture != Architecture.X64)
        {
            throw new PlatformNotSupportedException("The io_uring denial filter is written for Linux on x86_64.");
        }

        uint deny = SECCOMP_RET_ERRNO | (uint)errno;
        // Jump offsets count from the next instruction.
        sock_filter* program = stackalloc sock_filter[]
        {
            /* 0 */ new(BPF_LD_W_ABS, 0, 0, SeccompDataArch),
            /* 1 */ new(BPF_JMP_JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
            /* 2 */ new(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
            /* 3 */ new(BPF_LD_W_ABS, 0, 0, SeccompDataNr),
            /* 4 */ new(BPF_JMP_JEQ_K, 3, 0, (uint)SYS_io_uring_setup),
            /* 5 */ new(BPF_JMP_JEQ_K, 2, 0, (uint)SYS_io_uring_enter),
            /* 6 */ new(BPF_JMP_JEQ_K, 1, 0, (uint)SYS_io_uring_register),
            /* 7 */ new(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
            /* 8 */ new(BPF_RET_K, 0, 0, deny),
        };

        InstallFilter(program, 9);
    }

    /// <summary>Installs a classic BPF seccomp program for every thread of the process.</summary>
    public static void InstallFilter(sock_filter* program, int length)
    {
        var fprog = new sock_fprog { len = checked((ushort)length), filter = program };

        // Without NO_NEW_PRIVS an unprivileged process may not install a filter.
        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        {
            throw new InvalidOperationException($"prctl(PR_SET_NO_NEW_PRIVS) failed: errno {Marshal.GetLastPInvokeError()}.");
        }

        // TSYNC applies the filter to the runtime's threads that already exist, not only to this one.
        nint result = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, &fprog);
        if (result != 0)
        {
            throw new InvalidOperationException(result > 0
                ? $"seccomp(TSYNC) could not synchronize thread {result}."
                : $"seccomp(SET_MODE_FILTER) failed: errno {Marshal.GetLastPInvokeError()}.");
        }
    }

    /// <summary>Calls io_uring_setup once and reports the outcome: "ok", or the errno number.</summary>
    public static string Probe()
    {
        // struct io_uring_params is 120 bytes; zeroed asks for defaults.
        byte* parameters = stackalloc byte[120];
        new Span<byte>(parameters, 120).Clear();
        nint fd = syscall(SYS_io_uring_setup, 2, (nint)parameters, null);
        if (fd < 0)
        {
            return $"errno={Marshal.GetLastPInvokeError()}";
        }

        close((int)fd);
        return "ok";
    }
}
