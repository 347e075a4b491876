using System.Text;

namespace KestrelProactor.Tests.Infrastructure;

/// <summary>
/// Where this process's kernel-side threads are: for each io_uring submission-polling thread (iou-sqp), io_uring
/// worker (iou-wrk) and dispatcher thread, its state, the kernel function it waits in and, when readable (root), its
/// kernel stack. Written to a test's output when a test gives up waiting, so a stall says whether the kernel or the
/// transport held it.
/// </summary>
internal static class KernelThreads
{
    public static string Describe()
    {
        var text = new StringBuilder("kernel threads:");
        try
        {
            foreach (string task in Directory.EnumerateDirectories("/proc/self/task"))
            {
                string comm = ReadOrEmpty(Path.Combine(task, "comm")).Trim();
                if (!comm.StartsWith("iou-", StringComparison.Ordinal) && !comm.StartsWith("Proactor", StringComparison.Ordinal))
                {
                    continue;
                }

                string stat = ReadOrEmpty(Path.Combine(task, "stat"));
                int close = stat.LastIndexOf(')');
                string state = close > 0 && close + 2 < stat.Length ? stat.Substring(close + 2, 1) : "?";
                text.Append($"\n  {Path.GetFileName(task)} {comm} state={state} wchan={ReadOrEmpty(Path.Combine(task, "wchan")).Trim()}");
                foreach (string frame in ReadOrEmpty(Path.Combine(task, "stack")).Split('\n', StringSplitOptions.RemoveEmptyEntries))
                {
                    text.Append("\n    ").Append(frame.Trim());
                }
            }
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            text.Append(" unreadable: ").Append(ex.Message);
        }

        return text.ToString();
    }

    private static string ReadOrEmpty(string path)
    {
        try
        {
            return File.ReadAllText(path);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            return "";
        }
    }
}
