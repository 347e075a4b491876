using System.Diagnostics;
using System.Text;
using KestrelProactor.Tests.Infrastructure;

namespace KestrelProactor.Tests.Fallback;

/// <summary>
/// Runs KestrelProactor.FallbackHost as a child process and collects everything it prints. Every wait is bounded;
/// disposing closes its standard input (its signal to stop) and kills it if it has not exited.
/// </summary>
internal sealed class FallbackHostProcess : IAsyncDisposable
{
    private const string ReadyPrefix = "FALLBACKHOST READY ";
    private readonly Process _process;
    private readonly StringBuilder _output = new();
    private readonly Lock _gate = new();
    private readonly TaskCompletionSource<string> _ready = new(TaskCreationOptions.RunContinuationsAsynchronously);

    private FallbackHostProcess(Process process) => _process = process;

    public static string HostPath
    {
        get
        {
            // The test assembly runs from tests/KestrelProactor.Tests/bin/<Configuration>/<tfm>/; the host (a build
            // dependency of this project) lands in the same layout next to it.
            var tfmDirectory = new DirectoryInfo(AppContext.BaseDirectory.TrimEnd(Path.DirectorySeparatorChar));
            var configurationDirectory = tfmDirectory.Parent!;
            var testsDirectory = configurationDirectory.Parent!.Parent!.Parent!;
            return Path.Combine(
                testsDirectory.FullName, "KestrelProactor.FallbackHost", "bin", configurationDirectory.Name, tfmDirectory.Name,
                "KestrelProactor.FallbackHost.dll");
        }
    }

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

    public int ExitCode => _process.ExitCode;

    public static FallbackHostProcess Start(params string[] arguments)
    {
        string hostPath = HostPath;
        Assert.True(File.Exists(hostPath), $"The fallback host was not built at {hostPath}.");
        var startInfo = new ProcessStartInfo("dotnet")
        {
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        startInfo.ArgumentList.Add("exec");
        startInfo.ArgumentList.Add(hostPath);
        foreach (string argument in arguments)
        {
            startInfo.ArgumentList.Add(argument);
        }

        // Keep the child's log plain and its environment predictable.
        startInfo.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1";
        startInfo.Environment["NO_COLOR"] = "1";
        startInfo.Environment.Remove("ASPNETCORE_URLS");

        var process = new Process { StartInfo = startInfo, EnableRaisingEvents = true };
        var host = new FallbackHostProcess(process);
        process.OutputDataReceived += (_, e) => host.OnLine(e.Data);
        process.ErrorDataReceived += (_, e) => host.OnLine(e.Data);
        process.Start();
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        return host;
    }

    /// <summary>Waits for the READY line and returns its fields (url, backend, reason).</summary>
    public async Task<Dictionary<string, string>> WaitForReadyAsync()
    {
        var exited = _process.WaitForExitAsync();
        var first = await Task.WhenAny(_ready.Task, exited).LongTimeout();
        if (first != _ready.Task)
        {
            Assert.Fail($"The fallback host exited with {_process.ExitCode} before it was ready. Output:\n{Output}");
        }

        string line = await _ready.Task;
        var fields = new Dictionary<string, string>();
        // "url=... backend=... reason=<free text to the end of the line>"
        int reasonAt = line.IndexOf(" reason=", StringComparison.Ordinal);
        foreach (string field in line[..reasonAt].Split(' ', StringSplitOptions.RemoveEmptyEntries))
        {
            int equals = field.IndexOf('=');
            fields[field[..equals]] = field[(equals + 1)..];
        }

        fields["reason"] = line[(reasonAt + " reason=".Length)..];
        return fields;
    }

    /// <summary>Closes the child's standard input and waits for it to exit on its own.</summary>
    public async Task StopAsync()
    {
        _process.StandardInput.Close();
        await WaitForExitAsync();
    }

    public async Task WaitForExitAsync()
    {
        await _process.WaitForExitAsync().LongTimeout();
        // The asynchronous readers finish after the process; this waits for them to reach end of stream.
        _process.WaitForExit();
    }

    public async ValueTask DisposeAsync()
    {
        try
        {
            if (!_process.HasExited)
            {
                _process.StandardInput.Close();
                using var grace = new CancellationTokenSource(TimeSpan.FromSeconds(5));
                try
                {
                    await _process.WaitForExitAsync(grace.Token);
                }
                catch (OperationCanceledException)
                {
                    // It did not stop on its own: end it.
                }
            }
        }
        catch (InvalidOperationException)
        {
            // The process never started or is already gone.
        }
        finally
        {
            try
            {
                if (!_process.HasExited)
                {
                    _process.Kill(entireProcessTree: true);
                    await _process.WaitForExitAsync().DefaultTimeout();
                }
            }
            catch (InvalidOperationException)
            {
            }

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
        }

        if (line.StartsWith(ReadyPrefix, StringComparison.Ordinal))
        {
            _ready.TrySetResult(line[ReadyPrefix.Length..]);
        }
    }
}
