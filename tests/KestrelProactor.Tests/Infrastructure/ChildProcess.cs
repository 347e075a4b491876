using System.Diagnostics;
using System.Text;

namespace KestrelProactor.Tests.Infrastructure;

/// <summary>
/// A child process (the dotnet CLI or a built app) whose output is collected line by line. Every wait is bounded;
/// disposing kills it and everything it started if it is still running.
/// </summary>
internal sealed partial class ChildProcess : IAsyncDisposable
{
    private readonly Process _process;
    private readonly StringBuilder _output = new();
    private readonly Lock _gate = new();
    private readonly List<(Func<string, bool> Match, TaskCompletionSource<string> Found)> _waiters = new();

    private ChildProcess(Process process) => _process = process;

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

    public bool HasExited => _process.HasExited;

    public int ExitCode => _process.ExitCode;

    /// <summary>Starts <paramref name="fileName"/>; <paramref name="environment"/> entries with a null value are removed.</summary>
    public static ChildProcess Start(
        string fileName,
        IEnumerable<string> arguments,
        string? workingDirectory = null,
        IReadOnlyDictionary<string, string?>? environment = null)
    {
        var startInfo = new ProcessStartInfo(fileName)
        {
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
            WorkingDirectory = workingDirectory ?? Environment.CurrentDirectory,
        };
        foreach (string argument in arguments)
        {
            startInfo.ArgumentList.Add(argument);
        }

        // The test host may run under MSBuild-set variables (dotnet test); a nested dotnet build must not inherit them.
        foreach (string key in startInfo.Environment.Keys.Where(k => k.StartsWith("MSBuild", StringComparison.OrdinalIgnoreCase)).ToList())
        {
            startInfo.Environment.Remove(key);
        }

        startInfo.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1";
        startInfo.Environment["DOTNET_NOLOGO"] = "1";
        startInfo.Environment["DOTNET_SKIP_FIRST_TIME_EXPERIENCE"] = "1";
        // No build server or reused node outlives the test.
        startInfo.Environment["MSBUILDDISABLENODEREUSE"] = "1";
        startInfo.Environment["DOTNET_CLI_USE_MSBUILD_SERVER"] = "0";
        startInfo.Environment["NO_COLOR"] = "1";
        startInfo.Environment.Remove("ASPNETCORE_URLS");
        startInfo.Environment.Remove("ASPNETCORE_HOSTINGSTARTUPASSEMBLIES");
        startInfo.Environment.Remove("DOTNET_STARTUP_HOOKS");
        if (environment is not null)
        {
            foreach ((string key, string? value) in environment)
            {
                if (value is null)
                {
                    startInfo.Environment.Remove(key);
                }
                else
                {
                    startInfo.Environment[key] = value;
                }
            }
        }

        var process = new Process { StartInfo = startInfo, EnableRaisingEvents = true };
        var child = new ChildProcess(process);
        process.OutputDataReceived += (_, e) => child.OnLine(e.Data);
        process.ErrorDataReceived += (_, e) => child.OnLine(e.Data);
        process.Start();
        process.StandardInput.Close();
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        return child;
    }

    /// <summary>Runs the dotnet CLI to completion within <paramref name="timeout"/> and fails the test on a non-zero exit.</summary>
    public static async Task<string> RunDotnetAsync(TimeSpan timeout, string workingDirectory, IReadOnlyDictionary<string, string?>? environment, params string[] arguments)
    {
        await using ChildProcess child = Start("dotnet", arguments, workingDirectory, environment);
        await child.WaitForExitAsync(timeout);
        Assert.True(child.ExitCode == 0, $"dotnet {string.Join(' ', arguments)} exited with {child.ExitCode}:\n{child.Output}");
        return child.Output;
    }

    /// <summary>Waits for a line that matches, failing fast if the process exits first.</summary>
    public async Task<string> WaitForLineAsync(Func<string, bool> match, TimeSpan timeout)
    {
        var found = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
        lock (_gate)
        {
            foreach (string line in _output.ToString().Split('\n'))
            {
                if (match(line.TrimEnd('\r')))
                {
                    return line.TrimEnd('\r');
                }
            }

            _waiters.Add((match, found));
        }

        Task exited = _process.WaitForExitAsync();
        Task first = await Task.WhenAny(found.Task, exited).WaitAsync(timeout);
        if (first != found.Task)
        {
            // Let the readers reach the end of the output before reporting it.
            _process.WaitForExit();
            Assert.Fail($"The process exited with {_process.ExitCode} before the expected line. Output:\n{Output}");
        }

        return await found.Task;
    }

    public async Task WaitForExitAsync(TimeSpan timeout)
    {
        try
        {
            await _process.WaitForExitAsync().WaitAsync(timeout);
        }
        catch (TimeoutException)
        {
            Assert.Fail($"The process did not exit within {timeout}. Output so far:\n{Output}");
        }

        // The asynchronous readers finish after the process; this waits for them to reach end of stream.
        _process.WaitForExit();
    }

    /// <summary>Asks the process to stop as a service manager would (SIGTERM), then waits for it.</summary>
    public async Task StopAsync(TimeSpan timeout)
    {
        if (!_process.HasExited)
        {
            Posix.Kill(_process.Id, Posix.SIGTERM);
        }

        await WaitForExitAsync(timeout);
    }

    public async ValueTask DisposeAsync()
    {
        try
        {
            if (!_process.HasExited)
            {
                _process.Kill(entireProcessTree: true);
                await _process.WaitForExitAsync().WaitAsync(TestTimeouts.Default);
            }
        }
        catch (InvalidOperationException)
        {
            // It was never started or is already gone.
        }
        finally
        {
            _process.Dispose();
        }
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
            for (int i = _waiters.Count - 1; i >= 0; i--)
            {
                if (_waiters[i].Match(line))
                {
                    _waiters[i].Found.TrySetResult(line);
                    _waiters.RemoveAt(i);
                }
            }
        }
    }

    private static partial class Posix
    {
        public const int SIGTERM = 15;

        [System.Runtime.InteropServices.LibraryImport("libc", EntryPoint = "kill", SetLastError = true)]
        public static partial int Kill(int pid, int signal);
    }
}
