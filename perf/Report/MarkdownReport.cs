using System.Globalization;
using System.Text;

namespace KestrelProactor.Perf.Report;

/// <summary>Renders the results page: environment, medians side by side, costs per operation, every run, every error.</summary>
internal static class MarkdownReport
{
    public static string Render(IReadOnlyDictionary<string, string> meta, IReadOnlyList<RunRecord> runs,
        IReadOnlyList<ScenarioSummary> summaries, IReadOnlyList<RunError> errors)
    {
        var md = new StringBuilder();
        string mode = meta.GetValueOrDefault("mode", "?");
        md.AppendLine(CultureInfo.InvariantCulture, $"# Proactor vs socket transport: {meta.GetValueOrDefault("date", "?")} ({mode} mode)");
        md.AppendLine();
        AppendWarnings(md, meta, runs, errors);
        AppendEnvironment(md, meta);

        int rounds = int.TryParse(meta.GetValueOrDefault("rounds"), out int r) ? r : 0;
        md.AppendLine(CultureInfo.InvariantCulture, $"## Results (median of {rounds} alternating round(s) per transport)");
        md.AppendLine();
        md.AppendLine("| scenario | unit | sockets | proactor | proactor/sockets | p50 µs (s / p) | p99 µs (s / p) | errors (s / p) |");
        md.AppendLine("|---|---|---:|---:|---:|---:|---:|---:|");
        foreach (var s in summaries)
        {
            md.AppendLine(CultureInfo.InvariantCulture,
                $"| {s.Scenario} | {s.Unit}{(s.HasRatio ? (s.HigherIsBetter ? " ↑" : " ↓") : "")} | {F(s.Median(s.Sockets, x => x.Value))} | {F(s.Median(s.Proactor, x => x.Value))} | {Ratio(s.ValueRatio)} " +
                $"| {F(s.Median(s.Sockets, x => x.P50Us))} / {F(s.Median(s.Proactor, x => x.P50Us))} " +
                $"| {F(s.Median(s.Sockets, x => x.P99Us))} / {F(s.Median(s.Proactor, x => x.P99Us))} " +
                $"| {ErrorCell(errors, s.Scenario, "sockets")} / {ErrorCell(errors, s.Scenario, "proactor")} |");
        }

        md.AppendLine();
        AppendCeiling(md, runs, summaries, errors);
        md.AppendLine("## Server cost per operation (medians; op = request, message, MiB transferred)");
        md.AppendLine();
        md.AppendLine("| scenario | CPU µs/op (s / p) | ratio | syscalls/op (s / p) | ratio | context switches/op (s / p) | ratio |");
        md.AppendLine("|---|---:|---:|---:|---:|---:|---:|");
        foreach (var s in summaries.Where(s => s.Sockets.Concat(s.Proactor).Any(x => x.CpuUsPerOp.HasValue || x.ContextSwitchesPerOp.HasValue)))
        {
            md.Append(CultureInfo.InvariantCulture, $"| {s.Scenario} ");
            foreach (Func<RunRecord, double?> metric in new Func<RunRecord, double?>[] { x => x.CpuUsPerOp, x => x.SyscallsPerOp, x => x.ContextSwitchesPerOp })
            {
                double? sockets = s.Median(s.Sockets, metric), proactor = s.Median(s.Proactor, metric);
                md.Append(CultureInfo.InvariantCulture, $"| {F(sockets)} / {F(proactor)} | {Ratio(ScenarioSummary.Ratio(proactor, sockets))} ");
            }

            md.AppendLine("|");
        }

        md.AppendLine();
        AppendErrors(md, errors);
        AppendEveryRun(md, runs);
        md.AppendLine("Columns are explained in [perf/README.md](../README.md#reading-the-report). ↑: higher is better; ↓: lower is better. " +
                      "n/a: not measured (the counter is unavailable, or the tool reports no such figure); —: no run produced a value.");
        return md.ToString();
    }

    private static void AppendCeiling(StringBuilder md, IReadOnlyList<RunRecord> runs, IReadOnlyList<ScenarioSummary> summaries, IReadOnlyList<RunError> errors)
    {
        var ceiling = new Ceiling(runs);
        if (!ceiling.Loads.Any())
        {
            return;
        }

        md.AppendLine("## Ceiling: perf/Ceiling, one thread, epoll, no HTTP stack (medians)");
        md.AppendLine();
        md.AppendLine("| load | req/s | p50 µs | p99 µs | CPU µs/req | syscalls/req | context switches/req | errors |");
        md.AppendLine("|---|---:|---:|---:|---:|---:|---:|---:|");
        foreach (string load in ceiling.Loads)
        {
            md.AppendLine(CultureInfo.InvariantCulture,
                $"| {load} | {F(ceiling.Median(load, x => x.Value))} | {F(ceiling.Median(load, x => x.P50Us))} | {F(ceiling.Median(load, x => x.P99Us))} " +
                $"| {F(ceiling.Median(load, x => x.CpuUsPerOp))} | {F(ceiling.Median(load, x => x.SyscallsPerOp))} | {F(ceiling.Median(load, x => x.ContextSwitchesPerOp))} " +
                $"| {ErrorCell(errors, load, Ceiling.Transport)} |");
        }

        md.AppendLine();
        var bounded = summaries.Where(s => ceiling.LoadFor(s.Scenario) is not null).ToList();
        if (bounded.Count == 0)
        {
            return;
        }

        md.AppendLine("**Percent of ceiling** (transport median / ceiling median under the same wrk command): req/s ↑ (100% = the ceiling's rate), " +
                      "CPU µs per request ↓ (100% = the ceiling's cost).");
        md.AppendLine();
        md.AppendLine("| scenario | ceiling load | req/s % of ceiling (s / p) | CPU µs/req % of ceiling (s / p) |");
        md.AppendLine("|---|---|---:|---:|");
        foreach (var s in bounded)
        {
            string load = ceiling.LoadFor(s.Scenario)!;
            double? rate = ceiling.Median(load, x => x.Value), cpu = ceiling.Median(load, x => x.CpuUsPerOp);
            md.AppendLine(CultureInfo.InvariantCulture,
                $"| {s.Scenario} | {load} | {Pct(Ceiling.Percent(s.Median(s.Sockets, x => x.Value), rate))} / {Pct(Ceiling.Percent(s.Median(s.Proactor, x => x.Value), rate))} " +
                $"| {Pct(Ceiling.Percent(s.Median(s.Sockets, x => x.CpuUsPerOp), cpu))} / {Pct(Ceiling.Percent(s.Median(s.Proactor, x => x.CpuUsPerOp), cpu))} |");
        }

        md.AppendLine();
    }

    private static string Pct(double? percent) => percent is double p ? p.ToString("F0", CultureInfo.InvariantCulture) + "%" : "n/a";

    private static void AppendWarnings(StringBuilder md, IReadOnlyDictionary<string, string> meta, IReadOnlyList<RunRecord> runs, IReadOnlyList<RunError> errors)
    {
        var fellBack = runs.Where(r => r.Transport == "proactor" && r.Backend is not ("io_uring" or "iocp")).ToList();
        if (fellBack.Count > 0)
        {
            int proactorRuns = runs.Count(r => r.Transport == "proactor");
            string backends = string.Join(", ", fellBack.Select(r => r.Backend.Length == 0 ? "none" : r.Backend).Distinct());
            string reason = meta.GetValueOrDefault("fallback_reason", "?");
            md.AppendLine(CultureInfo.InvariantCulture,
                $"> **Warning: {fellBack.Count} of {proactorRuns} proactor run(s) did not run on the proactor backend** (backend: {backends}; reason: \"{reason}\"). Those columns measure Kestrel's socket transport, not the proactor.");
            md.AppendLine();
        }

        if (meta.GetValueOrDefault("mode") == "quick")
        {
            md.AppendLine("> Quick mode is a smoke test (one round, short runs, small transfers): it checks that both transports work; its numbers are not measurements.");
            md.AppendLine();
        }

        if (meta.GetValueOrDefault("fault", "none") != "none")
        {
            md.AppendLine(CultureInfo.InvariantCulture, $"> Servers ran with `--fault {meta["fault"]}`: this run tests the harness's checks, errors are expected.");
            md.AppendLine();
        }

        string status = errors.Count == 0
            ? "**Status: clean** (no errors in any run)."
            : $"**Status: {errors.Count} error(s)**, listed under [Errors](#errors).";
        md.AppendLine(status);
        md.AppendLine();
    }

    private static void AppendEnvironment(StringBuilder md, IReadOnlyDictionary<string, string> meta)
    {
        md.AppendLine("| environment | |");
        md.AppendLine("|---|---|");
        foreach (var (key, label) in new[]
        {
            ("kernel", "kernel"), ("cpus", "CPUs"), ("cpu_model", "CPU model"), ("memory", "memory"),
            ("runtime", ".NET runtime"), ("dotnet_sdk", ".NET SDK"), ("wrk", "wrk"), ("h2load", "h2load"),
            ("rounds", "rounds"), ("duration_s", "measured seconds per run"), ("warmup_s", "warm-up seconds per run"),
            ("ports", "loopback ports"), ("servers", "servers"), ("ceiling", "ceiling"), ("proxy_backend", "proxy backend"), ("pin", "CPU pinning"), ("load_threads", "wrk/h2load threads"), ("dispatchers", "proactor dispatchers"),
            ("allow_fallback", "--allow-fallback"), ("fault", "fault injection"), ("idle_connections", "idle connections"),
            ("transfer_bytes", "transfer bytes"), ("syscall_counter", "syscall counter"),
            ("load_at_start", "load average at start"), ("load_at_end", "load average at end"), ("elapsed_s", "elapsed seconds"),
        })
        {
            md.AppendLine(CultureInfo.InvariantCulture, $"| {label} | {meta.GetValueOrDefault(key, "?")} |");
        }

        md.AppendLine();
    }

    private static void AppendErrors(StringBuilder md, IReadOnlyList<RunError> errors)
    {
        md.AppendLine("## Errors");
        md.AppendLine();
        if (errors.Count == 0)
        {
            md.AppendLine("None: no server failed to start or died, wrk and h2load counted no socket errors or non-2xx responses, " +
                          "every checksum and functional check matched, every idle connection answered again.");
        }
        else
        {
            md.AppendLine("| scenario | round | transport | error |");
            md.AppendLine("|---|---|---|---|");
            foreach (var e in errors)
            {
                md.AppendLine(CultureInfo.InvariantCulture, $"| {e.Scenario} | {e.Round} | {e.Transport} | {e.Message.Replace("|", "\\|", StringComparison.Ordinal)} |");
            }
        }

        md.AppendLine();
    }

    private static void AppendEveryRun(StringBuilder md, IReadOnlyList<RunRecord> runs)
    {
        md.AppendLine("## Every run, in the order it ran");
        md.AppendLine();
        md.AppendLine("| scenario | round | transport | backend | value | unit | p50 µs | p99 µs | CPU µs/op | syscalls/op | ctx sw/op | errors |");
        md.AppendLine("|---|---:|---|---|---:|---|---:|---:|---:|---:|---:|---|");
        foreach (var r in runs)
        {
            md.AppendLine(CultureInfo.InvariantCulture,
                $"| {r.Scenario} | {r.Round} | {r.Transport} | {(r.Backend.Length == 0 ? "none" : r.Backend)} | {F(r.Value)} | {r.Unit} | {F(r.P50Us)} | {F(r.P99Us)} " +
                $"| {F(r.CpuUsPerOp)} | {F(r.SyscallsPerOp)} | {F(r.ContextSwitchesPerOp)} | {(r.HadErrors ? "yes" : "")} |");
        }

        md.AppendLine();
    }

    private static string ErrorCell(IReadOnlyList<RunError> errors, string scenario, string transport)
    {
        int count = errors.Count(e => e.Scenario == scenario && e.Transport == transport);
        return count == 0 ? "0" : $"**{count}**";
    }

    public static string F(double? value) => value switch
    {
        null => "n/a",
        >= 1000 => value.Value.ToString("N0", CultureInfo.InvariantCulture),
        >= 10 => value.Value.ToString("F1", CultureInfo.InvariantCulture),
        _ => value.Value.ToString("0.###", CultureInfo.InvariantCulture),
    };

    private static string Ratio(double? ratio) => ratio is double r ? r.ToString("F2", CultureInfo.InvariantCulture) + "x" : "n/a";
}
