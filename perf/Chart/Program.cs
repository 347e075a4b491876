using System.Globalization;
using ScottPlot;

// Draws the proactor/sockets ratio of every scenario as a horizontal bar from 1.0 (parity): green where the
// proactor is better (faster, or less memory), red where it is worse. Reads the <name>.csv perf/Report writes.
string? ratiosPath = null, outPath = null, title = "proactor / sockets";
for (int i = 0; i + 1 < args.Length; i += 2)
{
    switch (args[i])
    {
        case "--ratios": ratiosPath = args[i + 1]; break;
        case "--out": outPath = args[i + 1]; break;
        case "--title": title = args[i + 1]; break;
        default: Console.Error.WriteLine($"unknown argument '{args[i]}'"); return 2;
    }
}

if (ratiosPath is null || outPath is null)
{
    Console.Error.WriteLine("usage: Chart --ratios results/<name>.csv --out results/<name>.png [--title TEXT]");
    return 2;
}

var rows = File.ReadAllLines(ratiosPath).Skip(1)
    .Select(line => line.Split(','))
    .Where(f => f.Length >= 9 && f[1] != "checks failed")
    .ToList();
var plot = new Plot();
if (rows.Count == 0)
{
    // A run of the functional checks alone has nothing to compare: say so in the picture rather than fail.
    plot.Title(title);
    plot.Add.Annotation("no scenario with a proactor/sockets ratio in this run");
    plot.SavePng(outPath, 800, 200);
    Console.WriteLine($"chart: {outPath} (no ratios)");
    return 0;
}

var ticks = new List<Tick>();
double maxDeviation = 0.1;
for (int i = 0; i < rows.Count; i++)
{
    string[] f = rows[i];
    string scenario = f[0], unit = f[1];
    bool higherIsBetter = f[2] == "1";
    int errorCount = int.Parse(f[6], CultureInfo.InvariantCulture) + int.Parse(f[7], CultureInfo.InvariantCulture);
    string backend = f[8];
    double position = rows.Count - 1 - i;   // first scenario at the top
    string label = $"{scenario} ({unit}{(higherIsBetter ? " ↑" : " ↓")}){(errorCount > 0 ? $" [{errorCount} errors]" : "")}{(backend is "io_uring" or "iocp" ? "" : $" [proactor={backend}]")}";
    ticks.Add(new Tick(position, label, isMajor: true));

    if (!double.TryParse(f[5], NumberStyles.Float, CultureInfo.InvariantCulture, out double ratio))
    {
        var missing = plot.Add.Text("n/a", 1, position);
        missing.LabelFontSize = 12;
        continue;
    }

    bool better = higherIsBetter ? ratio >= 1 : ratio <= 1;
    maxDeviation = Math.Max(maxDeviation, Math.Abs(ratio - 1));
    var bar = new Bar
    {
        Position = position,
        ValueBase = 1,
        Value = ratio,
        FillColor = errorCount > 0 ? Colors.Gray : better ? Colors.SeaGreen : Colors.IndianRed,
        Label = ratio.ToString("F2", CultureInfo.InvariantCulture) + "x",
        Size = 0.7,
    };
    var bars = plot.Add.Bars(new[] { bar });
    bars.Horizontal = true;
}

plot.Add.VerticalLine(1, width: 2, color: Colors.Black);
plot.Axes.Left.TickGenerator = new ScottPlot.TickGenerators.NumericManual(ticks.ToArray());
plot.Axes.SetLimitsX(1 - maxDeviation * 1.3, 1 + maxDeviation * 1.3);
plot.Axes.SetLimitsY(-0.7, rows.Count - 0.3);
plot.Title(title);
plot.XLabel("proactor / sockets (1.0 = parity; green = proactor better, red = worse, gray = run had errors)");
plot.Grid.YAxisStyle.IsVisible = false;
plot.SavePng(outPath, 1200, 120 + 42 * rows.Count);
Console.WriteLine($"chart: {outPath}");
return 0;
