using System.Globalization;

namespace KestrelProactor.Perf.Report;

/// <summary>One measured run (one scenario, one round, one transport): a row of the driver's raw.csv.</summary>
internal sealed record RunRecord(
    string Scenario,
    int Round,
    string Transport,
    string Backend,
    string Unit,
    double? Value,
    double? P50Us,
    double? P99Us,
    double? CpuUsPerOp,
    double? SyscallsPerOp,
    double? ContextSwitchesPerOp,
    bool HadErrors)
{
    private const int ColumnCount = 13;

    public static List<RunRecord> ReadCsv(string path)
    {
        var lines = File.ReadAllLines(path);
        if (lines.Length == 0 || !lines[0].StartsWith("scenario,", StringComparison.Ordinal))
        {
            throw new InvalidDataException($"{path} has no raw.csv header");
        }

        var records = new List<RunRecord>();
        for (int i = 1; i < lines.Length; i++)
        {
            string[] f = lines[i].Split(',');
            if (f.Length != ColumnCount)
            {
                throw new InvalidDataException($"{path}:{i + 1} has {f.Length} columns, expected {ColumnCount}: '{lines[i]}'");
            }

            records.Add(new RunRecord(
                f[0], int.Parse(f[1], CultureInfo.InvariantCulture), f[2], f[3], f[4],
                Number(f[5]), Number(f[6]), Number(f[7]), Number(f[8]), Number(f[9]), Number(f[10]),
                f[12] != "0"));
        }

        return records;
    }

    private static double? Number(string text)
        => double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out double value) ? value : null;
}
