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
        var text = new StringBuilder(
            $"thread pool: threads={ThreadPool.ThreadCount} pending={ThreadPool.PendingWorkItemCount} completed={ThreadPool.CompletedWorkItemCount}\n");
        var others = new Dictionary<string, int>();
        text.Append("kernel threads:");
        try
        {
            foreach (string task in Directory.EnumerateDirectories("/proc/self/task"))
            {
                string comm = ReadOrEmpty(Path.Combine(task, "comm")).Trim();
                if (!comm.StartsWith("iou-", StringComparison.Ordinal) && !comm.StartsWith("Proactor", StringComparison.Ordinal))
                {
                    string st = ReadOrEmpty(Path.Combine(task, "stat"));
                    int cl = st.LastIndexOf(')');
                    string key = $"{comm} state={(cl > 0 && cl + 2 < st.Length ? st.Substring(cl + 2, 1) : "?")} wchan={ReadOrEmpty(Path.Combine(task, "wchan")).Trim()}";
                    others[key] = others.GetValueOrDefault(key) + 1;
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

        text.Append("\nother threads:");
        foreach ((string key, int count) in others.OrderBy(pair => pair.Key, StringComparer.Ordinal))
        {
            text.Append($"\n  {count} x {key}");
        }

        Thread.Sleep(1000);
        text.Append($"\nthread pool 1 s later: threads={ThreadPool.ThreadCount} pending={ThreadPool.PendingWorkItemCount} completed={ThreadPool.CompletedWorkItemCount}");
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
