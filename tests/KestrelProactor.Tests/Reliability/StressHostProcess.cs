using System.Diagnostics;
using System.Text;
using KestrelProactor.Tests.Fallback;
using KestrelProactor.Tests.Infrastructure;

namespace KestrelProactor.Tests.Reliability;

/// <summary>
/// KestrelProactor.StressHost as a child process (for limits this process must not take on itself, such as a
/// low RLIMIT_NOFILE). Disposing closes its standard input, its signal to stop, and kills it if it lingers.
/// </summary>
internal sealed class StressHostProcess : IAsyncDisposable
{
    private const string ReadyPrefix = "STRESSHOST READY ";
    private readonly Process _process;
    private readonly StringBuilder _output = new();
    private readonly Lock _gate = new();
    private readonly TaskCompletionSource<Dictionary<string, string>> _ready = new(TaskCreationOptions.RunContinuationsAsynchronously);

    private StressHostProcess(Process process) => _process = process;

    public int ProcessId => _process.Id;

    /// <summary>Whether the host process has ended, and its exit code if so (for failure messages).</summary>
    public string State => _process.HasExited ? $"exited with {_process.ExitCode}" : "running";

    public string Output
    {
        get
        {
            lock (_gate)
            {
                return _output.ToString();
            }
        }
    }

    public static async Task<(StressHostProcess Host, Dictionary<string, string> Ready)> StartAsync(params string[] arguments)
    {
        // Built next to the fallback host, in the same layout.
        string hostPath = FallbackHostProcess.HostPath.Replace("KestrelProactor.FallbackHost", "KestrelProactor.StressHost", StringComparison.Ordinal);
        Assert.True(File.Exists(hostPath), $"The stress host was not built at {hostPath}.");
        var startInfo = new ProcessStartInfo("dotnet")
        {
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        startInfo.ArgumentList.Add("exec");
        startInfo.ArgumentList.Add(hostPath);
        startInfo.ArgumentList.Add("--stop-on-stdin-eof");
        foreach (string argument in arguments)
        {
            startInfo.ArgumentList.Add(argument);
        }

        startInfo.Environment["NO_COLOR"] = "1";
        // The GC reads /proc/meminfo on each collection and, when that open fails with EMFILE, ends the process
        // with "Out of memory." (seen with strace in the descriptor-exhaustion test). A 512 MiB gen0 budget keeps
        // collections out of the few seconds a test runs the child without descriptors.
        startInfo.Environment["DOTNET_GCgen0size"] = "0x20000000";
        startInfo.Environment.Remove("ASPNETCORE_URLS");
        var host = new StressHostProcess(new Process { StartInfo = startInfo });
        host._process.OutputDataReceived += (_, e) => host.OnLine(e.Data);
        host._process.ErrorDataReceived += (_, e) => host.OnLine(e.Data);
        host._process.Start();
        host._process.BeginOutputReadLine();
        host._process.BeginErrorReadLine();
        try
        {
            Task first = await Task.WhenAny(host._ready.Task, host._process.WaitForExitAsync()).LongTimeout();
            Assert.True(first == host._ready.Task, $"The stress host exited before it was ready:\n{host.Output}");
            return (host, await host._ready.Task);
        }
        catch
        {
            await host.DisposeAsync();
            throw;
        }
    }

    /// <summary>CPU time (user + system) the child has used, from /proc/&lt;pid&gt;/stat.</summary>
    public TimeSpan CpuTime()
    {
        string stat = File.ReadAllText($"/proc/{_process.Id}/stat");
        // Fields after the ")" that closes the command name: state is field 3, utime 14, stime 15.
        string[] fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
        long ticks = long.Parse(fields[11], System.Globalization.CultureInfo.InvariantCulture) + long.Parse(fields[12], System.Globalization.CultureInfo.InvariantCulture);
        return TimeSpan.FromSeconds(ticks / 100.0);
    }

    private void OnLine(string? line)
    {
        if (line is null)
        {
            return;
        }

        lock (_gate)
        {
            _output.AppendLine(line);
        }

        if (line.StartsWith(ReadyPrefix, StringComparison.Ordinal))
        {
            _ready.TrySetResult(line[ReadyPrefix.Length..].Split(' ').Select(f => f.Split('=', 2)).ToDictionary(f => f[0], f => f[1]));
        }
    }

    public async ValueTask DisposeAsync()
    {
        try
        {
            if (!_process.HasExited)
            {
                _process.StandardInput.Close();
                using var grace = new CancellationTokenSource(TimeSpan.FromSeconds(10));
                try
                {
                    await _process.WaitForExitAsync(grace.Token);
                }
                catch (OperationCanceledException)
                {
                    _process.Kill(entireProcessTree: true);
                    await _process.WaitForExitAsync().DefaultTimeout();
                }
            }
        }
        finally
        {
            _process.Dispose();
        }
    }
}
