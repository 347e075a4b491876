using System.Runtime.InteropServices;
using KestrelProactor.Perf.Ceiling;

// The ceiling: a raw HTTP/1.1 plaintext responder with no HTTP stack, measured with the same wrk commands as the
// plaintext scenarios. perf/run.sh reads the "CEILING-READY" line, then stops it with SIGTERM.
int port = 0;
if (args is ["--port", string value] && int.TryParse(value, out int parsed) && parsed is > 0 and < 65536)
{
    port = parsed;
}
else
{
    Console.Error.WriteLine("usage: Ceiling --port P");
    return 2;
}

var responder = new Responder(port);
using var term = PosixSignalRegistration.Create(PosixSignal.SIGTERM, context => { context.Cancel = true; responder.Stop(); });
using var interrupt = PosixSignalRegistration.Create(PosixSignal.SIGINT, context => { context.Cancel = true; responder.Stop(); });
Console.WriteLine($"CEILING-READY pid={Environment.ProcessId} port={port} backend=epoll threads=1");
responder.Run();
return 0;
