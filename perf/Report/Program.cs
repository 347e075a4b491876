using System.Globalization;
using KestrelProactor.Perf.Report;

// Turns the driver's raw.csv, errors.tsv and meta.env into <out>.md (the results page) and <out>.csv (the
// medians and ratios the chart draws).
string? raw = null, errorsPath = null, metaPath = null, outBase = null;
for (int i = 0; i + 1 < args.Length; i += 2)
{
    switch (args[i])
    {
        case "--raw": raw = args[i + 1]; break;
        case "--errors": errorsPath = args[i + 1]; break;
        case "--meta": metaPath = args[i + 1]; break;
        case "--out": outBase = args[i + 1]; break;
        default: Console.Error.WriteLine($"unknown argument '{args[i]}'"); return 2;
    }
}

if (raw is null || errorsPath is null || metaPath is null || outBase is null)
{
    Console.Error.WriteLine("usage: Report --raw raw.csv --errors errors.tsv --meta meta.env --out results/<name> (writes <name>.md and <name>.csv)");
    return 2;
}

var meta = File.ReadAllLines(metaPath)
    .Select(line => line.Split('=', 2))
    .Where(kv => kv.Length == 2)
    .GroupBy(kv => kv[0])
    .ToDictionary(g => g.Key, g => g.Last()[1]);
var runs = RunRecord.ReadCsv(raw);
var errors = RunError.ReadTsv(errorsPath);
var summaries = ScenarioSummary.Build(runs);

File.WriteAllText(outBase + ".md", MarkdownReport.Render(meta, runs, summaries, errors));

using (var csv = new StreamWriter(outBase + ".csv"))
{
    // The ceiling columns come last, so readers of the first nine (the chart) are unaffected; empty where no ceiling load applies.
    csv.WriteLine("scenario,unit,higher_is_better,sockets_median,proactor_median,ratio,errors_sockets,errors_proactor,proactor_backend," +
                  "ceiling_median,sockets_pct_of_ceiling,proactor_pct_of_ceiling,ceiling_cpu_us_per_op,sockets_cpu_pct_of_ceiling,proactor_cpu_pct_of_ceiling");
    var ceiling = new Ceiling(runs);
    foreach (var s in summaries)
    {
        string backend = string.Join("+", s.Proactor.Select(r => r.Backend.Length == 0 ? "none" : r.Backend).Distinct());
        string? load = ceiling.LoadFor(s.Scenario);
        double? ceilingRate = load is null ? null : ceiling.Median(load, r => r.Value);
        double? ceilingCpu = load is null ? null : ceiling.Median(load, r => r.CpuUsPerOp);
        csv.WriteLine(string.Join(',',
            s.Scenario, s.Unit, s.HigherIsBetter ? "1" : "0",
            Invariant(s.Median(s.Sockets, r => r.Value)), Invariant(s.Median(s.Proactor, r => r.Value)), Invariant(s.ValueRatio),
            errors.Count(e => e.Scenario == s.Scenario && e.Transport == "sockets"),
            errors.Count(e => e.Scenario == s.Scenario && e.Transport == "proactor"),
            backend,
            Invariant(ceilingRate),
            Invariant(Ceiling.Percent(s.Median(s.Sockets, r => r.Value), ceilingRate)),
            Invariant(Ceiling.Percent(s.Median(s.Proactor, r => r.Value), ceilingRate)),
            Invariant(ceilingCpu),
            Invariant(Ceiling.Percent(s.Median(s.Sockets, r => r.CpuUsPerOp), ceilingCpu)),
            Invariant(Ceiling.Percent(s.Median(s.Proactor, r => r.CpuUsPerOp), ceilingCpu))));
    }
}

return 0;

static string Invariant(double? value) => value?.ToString("R", CultureInfo.InvariantCulture) ?? "";
