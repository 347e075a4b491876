using BenchmarkDotNet.Running;

// dotnet run -c Release --project perf/Microbenchmarks -- --filter '*'      (or --list flat)
BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args);
