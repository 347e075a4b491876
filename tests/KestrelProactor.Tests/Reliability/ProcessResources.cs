using System.Runtime.InteropServices;

namespace KestrelProactor.Tests.Reliability;

/// <summary>What the process holds, read from /proc: descriptors, io_uring rings and dispatcher threads.</summary>
internal static partial class ProcessResources
{
    // Linux truncates thread names to 15 bytes: "Proactor Dispatcher #1" shows as "Proactor Dispat".
    private const string DispatcherThreadComm = "Proactor Dispat";
    private const int RLIMIT_NOFILE = 7;

    public static int OpenDescriptors() => Directory.GetFiles("/proc/self/fd").Length;

    /// <summary>Descriptors that are io_uring rings (each links to <c>anon_inode:[io_uring]</c>).</summary>
    public static int IoUringDescriptors() => CountDescriptors(static target => target == "anon_inode:[io_uring]");

    /// <summary>
    /// Socket descriptors (<c>socket:[inode]</c>): what a leaked connection holds. The runtime opens other kinds
    /// lazily (inotify, eventfd, epoll), so the leak checks count sockets.
    /// </summary>
    public static int SocketDescriptors() => CountDescriptors(static target => target.StartsWith("socket:", StringComparison.Ordinal));

    private static int CountDescriptors(Func<string, bool> match)
    {
        int count = 0;
        foreach (string path in Directory.GetFiles("/proc/self/fd"))
        {
            try
            {
                if (new FileInfo(path).LinkTarget is string target && match(target))
                {
                    count++;
                }
            }
            catch (IOException)
            {
                // Closed between the listing and the read.
            }
        }

        return count;
    }

    public static int DispatcherThreads()
    {
        int count = 0;
        foreach (string task in Directory.GetDirectories("/proc/self/task"))
        {
            try
            {
                if (File.ReadAllText(Path.Combine(task, "comm")).TrimEnd('\n') == DispatcherThreadComm)
                {
                    count++;
                }
            }
            catch (IOException)
            {
                // The thread ended between the listing and the read.
            }
        }

        return count;
    }

    /// <summary>
    /// Raises the soft descriptor limit towards <paramref name="wanted"/>: past the hard limit when the process
    /// may (CAP_SYS_RESOURCE), else up to the hard limit. Returns the soft limit now in force.
    /// </summary>
    public static ulong EnsureDescriptorLimit(ulong wanted)
    {
        Check(getrlimit(RLIMIT_NOFILE, out RLimit limit), "getrlimit");
        if (limit.Current >= wanted)
        {
            return limit.Current;
        }

        var raised = new RLimit { Current = wanted, Maximum = Math.Max(limit.Maximum, wanted) };
        if (setrlimit(RLIMIT_NOFILE, in raised) == 0)
        {
            return wanted;
        }

        // Root in a container often lacks CAP_SYS_RESOURCE (EPERM): settle for the hard limit.
        raised = new RLimit { Current = limit.Maximum, Maximum = limit.Maximum };
        Check(setrlimit(RLIMIT_NOFILE, in raised), "setrlimit");
        return limit.Maximum;
    }

    private static void Check(int result, string call)
    {
        if (result != 0)
        {
            throw new InvalidOperationException($"{call}(RLIMIT_NOFILE) failed with errno {Marshal.GetLastPInvokeError()}.");
        }
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct RLimit
    {
        public ulong Current;
        public ulong Maximum;
    }

    [LibraryImport("libc", SetLastError = true)]
    private static partial int getrlimit(int resource, out RLimit limit);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int setrlimit(int resource, in RLimit limit);
}
