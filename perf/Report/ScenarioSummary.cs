namespace KestrelProactor.Perf.Report;

/// <summary>The medians of one scenario for both transports, and the proactor/sockets ratios.</summary>
internal sealed class ScenarioSummary
{
    public required string Scenario { get; init; }
    public required string Unit { get; init; }
    public required IReadOnlyList<RunRecord> Sockets { get; init; }
    public required IReadOnlyList<RunRecord> Proactor { get; init; }

    /// <summary>Whether a larger primary value is better (throughput) or worse (memory, failed checks).</summary>
    public bool HigherIsBetter => Unit is "req/s" or "msg/s" or "MiB/s";

    /// <summary>The functional scenario counts failed checks: a ratio of those means nothing.</summary>
    public bool HasRatio => Unit != "checks failed";

    public static double? Median(IEnumerable<double?> values)
    {
        var sorted = values.Where(v => v.HasValue).Select(v => v!.Value).Order().ToArray();
        if (sorted.Length == 0)
        {
            return null;
        }

        int middle = sorted.Length / 2;
        return sorted.Length % 2 == 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
    }

    public static double? Ratio(double? proactor, double? sockets)
        => proactor is double p && sockets is double s && s != 0 ? p / s : null;

    public double? Median(IReadOnlyList<RunRecord> runs, Func<RunRecord, double?> metric) => Median(runs.Select(metric));

    public double? ValueRatio => HasRatio ? Ratio(Median(Proactor, r => r.Value), Median(Sockets, r => r.Value)) : null;

    public static List<ScenarioSummary> Build(IReadOnlyList<RunRecord> runs)
    {
        var summaries = new List<ScenarioSummary>();
        // The ceiling's runs have no transport pair; the report sets them apart (see Ceiling).
        foreach (var group in runs.Where(r => r.Transport != Ceiling.Transport).GroupBy(r => r.Scenario))
        {
            // A run that never started has no unit; the scenario's unit comes from the runs that did.
            string unit = group.Select(r => r.Unit).FirstOrDefault(u => u.Length > 0) ?? "";
            summaries.Add(new ScenarioSummary
            {
                Scenario = group.Key,
                Unit = unit,
                Sockets = group.Where(r => r.Transport == "sockets").ToList(),
                Proactor = group.Where(r => r.Transport == "proactor").ToList(),
            });
        }

        return summaries;
    }
}
