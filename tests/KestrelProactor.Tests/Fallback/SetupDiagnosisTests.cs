using KestrelProactor.IoUring;

namespace KestrelProactor.Tests.Fallback;

/// <summary>
/// The causes of EPERM from io_uring_setup that cannot be staged in a test without changing the whole machine
/// (the kernel.io_uring_disabled sysctl): the explanation for each reading. The seccomp cause is staged for real in
/// <see cref="FallbackHealthTests"/>.
/// </summary>
public sealed class SetupDiagnosisTests
{
    [Theory]
    [InlineData(2, false, "io_uring is switched off on this host: kernel.io_uring_disabled = 2")]
    [InlineData(2, true, "io_uring is switched off on this host: kernel.io_uring_disabled = 2")]
    [InlineData(1, false, "kernel.io_uring_disabled = 1 allows io_uring only to processes in the group kernel.io_uring_group names")]
    [InlineData(1, true, "or by this process's seccomp filter: container runtimes' default seccomp profiles")]
    [InlineData(0, true, "denied by this process's seccomp filter: container runtimes' default seccomp profiles")]
    [InlineData(0, false, "denied by a seccomp filter, kernel.io_uring_disabled or a security module")]
    [InlineData(-1, false, "denied by a seccomp filter, kernel.io_uring_disabled or a security module")]
    public void ExplainDenied_NamesTheCauseTheProcessCanSee(int sysctl, bool underFilter, string expected)
    {
        Assert.Contains(expected, IoUringSetupDiagnosis.ExplainDenied(sysctl, underFilter));
    }
}
