namespace KestrelProactor.Perf.Report;

/// <summary>One error the driver recorded (errors.tsv): every one of them is printed in the report.</summary>
internal sealed record RunError(string Scenario, string Round, string Transport, string Message)
{
    public static List<RunError> ReadTsv(string path)
        => File.ReadAllLines(path)
            .Where(line => line.Length > 0)
            .Select(line => line.Split('\t', 4))
            .Select(f => f.Length == 4
                ? new RunError(f[0], f[1], f[2], f[3])
                : new RunError("?", "?", "?", $"unparsable error line: {string.Join(' ', f)}"))
            .ToList();
}
