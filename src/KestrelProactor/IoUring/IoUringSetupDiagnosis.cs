using static KestrelProactor.Interop.Linux.Interop;

namespace KestrelProactor.IoUring;

/// <summary>
/// Says why <c>io_uring_setup</c> failed, in terms an operator can act on. It runs once, when the transport falls
/// back, and the words end up in the fallback warning, the exception without fallback, and the health check.
/// <para>
/// <c>EPERM</c> has three usual causes, which the process can tell apart itself: the host switched io_uring off
/// (<c>kernel.io_uring_disabled</c> = 2), or allows it only to one group (= 1), or the process runs under a seccomp
/// filter, which is what a container runtime installs. Docker's and containerd's default profiles deny io_uring's
/// three calls, so in a default container the cause is almost always the profile.
/// </para>
/// </summary>
internal static class IoUringSetupDiagnosis
{
    private const string DisabledSysctl = "/proc/sys/kernel/io_uring_disabled";
    private const string ProcessStatus = "/proc/self/status";

    /// <summary>What to do about the container profile; the same words wherever a filter is the likely cause.</summary>
    private const string ProfileAdvice =
        "container runtimes' default seccomp profiles (Docker's, containerd's) deny io_uring; run the container with a " +
        "profile that allows io_uring_setup, io_uring_enter and io_uring_register (see docs/operations.md, \"Containers\")";

    /// <summary>A parenthesised explanation to append to "io_uring_setup failed: {errno name}", or an empty string.</summary>
    public static string Explain(int errno) => errno switch
    {
        Errno.EPERM => ExplainDenied(ReadDisabledSysctl(), UnderSeccompFilter()),
        Errno.ENOSYS => UnderSeccompFilter()
            ? $" (the kernel has no io_uring, or this process's seccomp filter hides it: {ProfileAdvice})"
            : " (the kernel has no io_uring)",
        Errno.ENOMEM => " (locked memory limit too low)",
        _ => string.Empty,
    };

    /// <summary>The explanation of EPERM from the sysctl's value (-1 when unknown) and whether a seccomp filter applies.</summary>
    internal static string ExplainDenied(int disabledSysctl, bool underSeccompFilter) => (disabledSysctl, underSeccompFilter) switch
    {
        (2, _) => " (io_uring is switched off on this host: kernel.io_uring_disabled = 2)",
        (1, false) => " (kernel.io_uring_disabled = 1 allows io_uring only to processes in the group kernel.io_uring_group names)",
        (1, true) => $" (denied by kernel.io_uring_disabled = 1, which allows io_uring only to the group kernel.io_uring_group names, or by this process's seccomp filter: {ProfileAdvice})",
        (_, true) => $" (denied by this process's seccomp filter: {ProfileAdvice})",
        _ => " (denied by a seccomp filter, kernel.io_uring_disabled or a security module)",
    };

    private static int ReadDisabledSysctl()
    {
        try
        {
            // Absent before 6.6, which had no such switch.
            return File.Exists(DisabledSysctl) && int.TryParse(File.ReadAllText(DisabledSysctl).Trim(), out int value) ? value : 0;
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            return -1;
        }
    }

    /// <summary>Whether the process runs under a seccomp filter ("Seccomp: 2" in its status; 1 is strict mode, 0 none).</summary>
    private static bool UnderSeccompFilter()
    {
        try
        {
            foreach (string line in File.ReadLines(ProcessStatus))
            {
                if (line.StartsWith("Seccomp:", StringComparison.Ordinal))
                {
                    return line.AsSpan("Seccomp:".Length).Trim().SequenceEqual("2");
                }
            }
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            // No procfs (a sandbox without /proc): say what we know, which is less.
        }

        return false;
    }
}
