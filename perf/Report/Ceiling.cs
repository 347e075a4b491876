namespace KestrelProactor.Perf.Report;

/// <summary>
/// The ceiling runs (transport "ceiling": perf/Ceiling, no HTTP stack) and which transport scenario each one bounds.
/// A transport's "percent of ceiling" is its median over the ceiling's median under the same wrk command.
/// </summary>
internal sealed class Ceiling
{
    public const string Transport = "ceiling";

    // Each plaintext-like scenario and the ceiling load run with the same wrk command.
    private static readonly Dictionary<string, string> s_loadFor = new()
    {
        ["plaintext-16"] = "ceiling-16",
        ["plaintext-64"] = "ceiling-64",
        ["plaintext-256"] = "ceiling-256",
        ["inline-plaintext-256"] = "ceiling-256",
        ["pipelined-16"] = "ceiling-pipelined-16",
        ["inline-pipelined-16"] = "ceiling-pipelined-16",
    };

    private readonly Dictionary<string, List<RunRecord>> _runs;

    public Ceiling(IEnumerable<RunRecord> runs)
        => _runs = runs.Where(r => r.Transport == Transport).GroupBy(r => r.Scenario).ToDictionary(g => g.Key, g => g.ToList());

    public IEnumerable<string> Loads => _runs.Keys;

    public IReadOnlyList<RunRecord> Runs(string load) => _runs.TryGetValue(load, out var runs) ? runs : [];

    public double? Median(string load, Func<RunRecord, double?> metric) => ScenarioSummary.Median(Runs(load).Select(metric));

    /// <summary>The ceiling load measured with the scenario's wrk command, or null when there is none or it was not run.</summary>
    public string? LoadFor(string scenario) => s_loadFor.TryGetValue(scenario, out string? load) && _runs.ContainsKey(load) ? load : null;

    /// <summary>value / ceiling value, in percent: req/s below 100 is short of the ceiling, CPU per request above 100 costs more.</summary>
    public static double? Percent(double? value, double? ceiling) => ScenarioSummary.Ratio(value, ceiling) * 100;
}
