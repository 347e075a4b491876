using KestrelProactor.Perf;

// Helpers for perf/run.sh that wrk, h2load and curl do not cover. Each prints one "key=value ..." result line
// and exits non-zero when anything it checked went wrong.
const string usage =
    "usage: LoadClient idle    --port P --count N [--hold-seconds S] [--release-file F]\n" +
    "       LoadClient trickle --port P --count N [--bytes B] [--round-delay-ms D] [--hold-seconds S] [--release-file F]\n" +
    "       LoadClient pattern --bytes N          (writes the /bytes/{n} pattern to stdout)\n" +
    "       LoadClient transfer --mode upload|download --port P --bytes N [--timeout-seconds S]\n" +
    "       LoadClient ws      --port P [--connections C] [--messages M] [--size B] [--timeout-seconds S]";

if (args.Length == 0)
{
    Console.Error.WriteLine(usage);
    return 2;
}

var options = ClientArguments.Parse(args.AsSpan(1));
try
{
    return args[0] switch
    {
        "idle" => await IdleConnections.RunAsync(options),
        "trickle" => await TrickleConnections.RunAsync(options),
        "pattern" => await PatternWriter.RunAsync(options),
        "ws" => await WebSocketEcho.RunAsync(options),
        "transfer" => await Transfer.RunAsync(options),
        _ => throw new ArgumentException($"unknown command '{args[0]}'"),
    };
}
catch (ArgumentException e)
{
    Console.Error.WriteLine(e.Message);
    Console.Error.WriteLine(usage);
    return 2;
}
