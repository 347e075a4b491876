// The fault-injection runs. Each seed: a server on the proactor transport (two dispatchers, io_uring on Linux and IOCP
// on Windows or under Wine, a tracking memory pool, a transport preset picked by the seed) with a seeded fault plan
// between its dispatchers and the kernel, a workload against it over loopback, then the invariants (see
// docs/fault-injection.md). Arguments:
//   --backend B    io_uring or iocp: the backend this host must be running on (it is the platform's; a mismatch is an error)
//   --seeds N      run N seeds (default 1)
//   --first S      the first seed (default 1); seeds S .. S+N-1
//   --step K       every K-th seed from S instead (S, S+K, ..): K = 12 keeps one transport preset (see RunAsync)
//   --seed S       one seed (as --first S --seeds 1)
//   --rate R       the chance per eligible event that a fault goes in (default 0.03)
//   --workers W    concurrent client workers (default 4); --sessions M sessions each (default 4)
//   --verbose      print each seed's faults by kind
//   --no-kill      never kill a dispatcher
//   --kinds K,L    only these session kinds (0 keep-alive, 1 churn, 2 echo, 3 upload, 4 download, 5 client abort,
//                  6 server abort, 7 HTTP/2, 8 WebSocket)
//   --only F,G     inject only these fault families (see IoUringFaultPlan and IocpFaultPlan)
// Prints one line per seed ("seed S: ok ..." or "seed S: FAILED ..." and the reasons), then "faults injected: N" and
// "N seeds, N failed". Exit code 0 only when no seed failed.
using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using KestrelProactor;
using KestrelProactor.Dispatching;
using KestrelProactor.Internal;
using KestrelProactor.FaultHost;
using KestrelProactor.Iocp;
using KestrelProactor.IoUring;
using Microsoft.AspNetCore.Connections;

int first = 1, seeds = 1, step = 1, workers = 4, sessions = 4;
double rate = 0.03;
bool verbose = false;
bool kills = true;
HashSet<string>? only = null;
for (int i = 0; i < args.Length; i++)
{
    switch (args[i])
    {
        case "--seeds" when i + 1 < args.Length: seeds = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
        case "--first" when i + 1 < args.Length: first = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
        case "--step" when i + 1 < args.Length: step = Math.Max(1, int.Parse(args[++i], CultureInfo.InvariantCulture)); break;
        case "--seed" when i + 1 < args.Length: first = int.Parse(args[++i], CultureInfo.InvariantCulture); seeds = 1; break;
        case "--rate" when i + 1 < args.Length: rate = double.Parse(args[++i], CultureInfo.InvariantCulture); break;
        case "--workers" when i + 1 < args.Length: workers = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
        case "--sessions" when i + 1 < args.Length: sessions = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
        case "--verbose": verbose = true; break;
        case "--no-kill": kills = false; break;
        case "--kinds" when i + 1 < args.Length: Runner.Kinds = args[++i].Split(',').Select(k => int.Parse(k, CultureInfo.InvariantCulture)).ToArray(); break;
        case "--only" when i + 1 < args.Length: only = [.. args[++i].Split(',')]; break;
        case "--backend" when i + 1 < args.Length:
            if (args[++i] != Runner.Backend)
            {
                Console.Error.WriteLine($"this host runs the {Runner.Backend} backend here, not {args[i]}");
                return 2;
            }

            break;
        default:
            Console.Error.WriteLine($"unknown argument: {args[i]}");
            return 2;
    }
}

if (Runner.Iocp)
{
    // Said once, at the top of the output: what the checks cannot see under Wine.
    Console.WriteLine("iocp: descriptors are counted as the process's handles where the OS reports them (" +
                      (Handles.Measurable ? "it does here" : "not here, under Wine: the check is skipped") + "); a killed dispatcher " +
                      "closes its listener (a listen socket cannot move to another completion port), so connections refused or " +
                      "reset by a listener that closed after a kill are excused");
}

// One run without faults first: the runtime opens what it opens once (its socket engine, the loader's files), so the
// descriptor counts of the seeds that follow compare like with like.
await Runner.RunAsync(0, 0, workers, sessions, verbose: false, warmUp: true, kills: false, only: null);
long injected = 0;
int failed = 0;
for (int seed = first; seed < first + seeds * step; seed += step)
{
    (bool ok, long faults) = await Runner.RunAsync(seed, rate, workers, sessions, verbose, warmUp: false, kills, only);
    injected += faults;
    if (!ok)
    {
        failed++;
    }
}

Console.WriteLine($"faults injected: {injected}");
Console.WriteLine($"{seeds} seeds, {failed} failed");
return failed == 0 ? 0 : 1;

internal static class Runner
{
    private static readonly TimeSpan ShutdownTimeout = TimeSpan.FromSeconds(5);

    /// <summary>True on Windows (or under Wine): the dispatchers are IOCP ones.</summary>
    public static bool Iocp => OperatingSystem.IsWindows();

    public static string Backend => Iocp ? "iocp" : "io_uring";

    /// <summary>Only these session kinds (see Workload), for narrowing a failure down; null: all.</summary>
    public static int[]? Kinds { get; set; }

    public static async Task<(bool Ok, long Faults)> RunAsync(int seed, double rate, int workers, int sessions, bool verbose, bool warmUp, bool kills, HashSet<string>? only)
    {
        var problems = new List<string>();
        Action<string>? trace = Environment.GetEnvironmentVariable("FAULTHOST_TRACE_KILL") == "1" ? Console.WriteLine : null;
        ProactorFaultPlan plan = Iocp
            ? new IocpFaultPlan(seed, rate) { AllowKill = kills, Only = only, Trace = trace }
            : new IoUringFaultPlan(seed, rate) { AllowKill = kills, Only = only, Trace = trace };
        var pool = new TrackingPool();
        var counters = new ServerCounters();
        // The seed also picks the transport's tier: the full ring tier, single-shot operations, the basic tier (no
        // buffer ring: receives into pipe memory after a poll), or small queues (a full SQ and CQ, buffers running out).
        // IOCP has one tier: the seed picks the default receive size or small receives (1 KiB: more receives per body).
        int preset = Iocp ? seed % 2 : seed % 4;
        string presetName = Iocp
            ? (preset == 0 ? "default" : "small-receives")
            : preset switch { 0 => "default", 1 => "singleshot", 2 => "basic", _ => "small-queues" };
        // On io_uring, one seed in three sends zero-copy across those (every send, however small): results and
        // notifications apart, blocks kept for the notification, the copied fallback, and faults on each.
        bool zeroCopy = !Iocp && seed / 4 % 3 == 1;
        if (zeroCopy)
        {
            presetName += "+zero-copy";
        }

        var stopwatch = Stopwatch.StartNew();
        Server.LiveConnections.Clear();
        int fdsBefore = Iocp ? 0 : Descriptors.Count();
        HashSet<string> fdTargetsBefore = Iocp ? [] : Descriptors.Targets();
        int handlesBefore = Iocp && Handles.Measurable ? Handles.Count() : 0;
        WebApplication app = Server.Build(2, o =>
        {
            o.MemoryPoolFactory = () => pool;
            if (Iocp)
            {
                o.ReceiveBufferSize = preset == 1 ? 1024 : o.ReceiveBufferSize;
                return;
            }

            o.DisableMultishot = preset == 1;
            o.DisableBufferRing = preset == 2;
            o.ZeroCopySendThreshold = zeroCopy ? 1 : 0;
            if (preset == 3)
            {
                o.SubmissionQueueSize = 8;
                // The CQ overflows for real: the kernel holds completions back (NODROP) until a pass makes room.
                o.CompletionQueueSize = 8;
                o.ReceiveBufferCount = 32;
                o.ReceiveBufferSize = 4096;
            }
        }, counters);
        SetCurrent(plan);
        try
        {
            await app.StartAsync();
        }
        finally
        {
            SetCurrent(null);
        }

        var factory = app.Services.GetServices<IConnectionListenerFactory>().OfType<ProactorTransportFactory>().Single();
        ProactorDispatcher[] dispatchers = factory.Backend!.Dispatchers;
        int[] ports = app.Urls.Select(u => new Uri(u).Port).ToArray();
        // Which dispatcher each listen port accepts on (on IOCP it stays there, and closes if that one is killed).
        var listenerOn = new Dictionary<int, int>();
        await Eventually(() =>
        {
            listenerOn.Clear();
            foreach (ProactorDispatcher d in dispatchers)
            {
                foreach (ProactorConnectionListener listener in d.OwnersForTests().OfType<ProactorConnectionListener>())
                {
                    listenerOn[(listener.EndPoint as System.Net.IPEndPoint)?.Port ?? 0] = d.Id;
                }
            }

            return listenerOn.Count == ports.Length;
        }, TimeSpan.FromSeconds(5));
        var workload = new Workload(seed, ports[0], ports[1], warmUp ? null : Kinds);
        Task<List<Outcome>> running = workload.RunAsync(warmUp ? 2 : workers, warmUp ? 9 : sessions);
        // One seed in five stops the host while sessions are in flight (a kill during the stop then meets live
        // connections); the others stop it once the workload is over and the server is quiet.
        bool stopMidway = !warmUp && seed % 5 == 4;
        TimeSpan stopTook = TimeSpan.Zero;
        if (stopMidway)
        {
            await Task.Delay(new Random(seed).Next(10, 200));
            stopTook = await StopAsync(app, problems);
        }

        List<Outcome> outcomes = await running;
        long backlogs = dispatchers.OfType<IoUringDispatcher>().Sum(d => d.CompletionQueueBacklogs);

        // Session verdicts: wrong bytes never pass; an error passes only on a connection a fault touched (or that
        // lived when its dispatcher was killed), or where the session expected one.
        int sessionErrors = 0;
        foreach (Outcome outcome in outcomes)
        {
            if (outcome.Error is null)
            {
                continue;
            }

            sessionErrors++;
            if (outcome.Error is WrongBytesException)
            {
                problems.Add($"{outcome.Session.Name}: {outcome.Error.Message}");
            }
            else if (outcome.Error is TimeoutException)
            {
                problems.Add($"{outcome.Session.Name} (ports {string.Join(',', outcome.Session.Ports)}): {outcome.Error.Message}");
            }
            else if (!outcome.ErrorExpected && !stopMidway && !Excused(outcome, plan, dispatchers, outcome.Session.Name == "http2" ? ports[1] : ports[0], listenerOn))
            {
                problems.Add($"{outcome.Session.Name} on untouched connection(s) {string.Join(',', outcome.Session.Ports)} failed: {outcome.Error.GetType().Name}: {outcome.Error.Message}");
            }
        }

        problems.AddRange(counters.Errors());

        // Quiet: every connection gone, only the listeners' accepts in flight, every lent buffer back. Two listeners,
        // unless a kill closed one (IOCP: a listen socket cannot move to another completion port).
        bool quiet = stopMidway || await Eventually(() =>
        {
            var live = dispatchers.Where(d => !d.HasEnded).ToArray();
            int listeners = live.Sum(d => d.OwnersForTests().Count(o => o is ProactorConnectionListener));
            return live.Sum(d => d.ConnectionCount) == listeners && (listeners == 2 || (Iocp && plan.Killed.Count != 0))
                   && live.Sum(d => d.InFlightOperations) <= listeners && live.All(d => d.ReceiveBuffersLent == 0);
        }, TimeSpan.FromSeconds(10));
        if (!quiet)
        {
            problems.Add("not quiet after the workload: " + string.Join("; ", dispatchers.Select(d =>
                $"#{d.Id} ended={d.HasEnded} owners={d.ConnectionCount} inFlight={d.InFlightOperations} lent={d.ReceiveBuffersLent}")));
        }

        if (Environment.GetEnvironmentVariable("FAULTHOST_TRACE_OWNERS") == "1" && !quiet)
        {
            foreach (ProactorDispatcher d in dispatchers.OfType<KestrelProactor.IoUring.IoUringDispatcher>())
            {
                problems.Add(((KestrelProactor.IoUring.IoUringDispatcher)d).DescribeReceiveState());
            }

            foreach (IocpDispatcher d in dispatchers.OfType<IocpDispatcher>())
            {
                problems.Add(d.DescribeOperationsForTests());
            }
        }

        if (!stopMidway)
        {
            stopTook = await StopAsync(app, problems);
        }

        if (stopTook > ShutdownTimeout + TimeSpan.FromSeconds(1))
        {
            problems.Add($"the host took {stopTook.TotalSeconds:F1}s to stop (shutdown timeout {ShutdownTimeout.TotalSeconds}s)");
        }

        foreach (ProactorDispatcher dispatcher in dispatchers)
        {
            if (!dispatcher.HasEnded)
            {
                problems.Add($"dispatcher #{dispatcher.Id} did not end");
            }

            if (dispatcher.HasFailed && !plan.Killed.ContainsKey(dispatcher.Id))
            {
                problems.Add($"dispatcher #{dispatcher.Id} failed and no fault killed it");
            }

            if (!dispatcher.HasFailed && dispatcher.InFlightOperations != 0)
            {
                problems.Add($"dispatcher #{dispatcher.Id} ended with {dispatcher.InFlightOperations} operation(s) in flight");
            }
        }

        if (!await Eventually(() => pool.Outstanding == 0, TimeSpan.FromSeconds(5)))
        {
            problems.Add($"{pool.Outstanding} pool block(s) never returned; kept for the kernel: {ProactorDispatcher.KeptForKernelCount} object(s), zero-copy sends kept at teardown: " +
                         string.Join(' ', dispatchers.OfType<IoUringDispatcher>().Select(d => $"#{d.Id}={d.ZeroCopySendsKeptAtTeardown}")) +
                         "; send blocks out at teardown: " + string.Join(' ', dispatchers.OfType<IoUringDispatcher>().Select(d => $"#{d.Id}={d.SendBlocksOutAtTeardown}")) +
                         ", recycled twice: " + string.Join(' ', dispatchers.OfType<IoUringDispatcher>().Select(d => $"#{d.Id}={d.SendBlocksRecycledTwice}")) +
                         ", handler faults: " + string.Join(' ', dispatchers.Select(d => $"#{d.Id}={d.HandlerFaults}")) +
                         ", stale completions: " + string.Join(' ', dispatchers.OfType<IoUringDispatcher>().Select(d => $"#{d.Id}={d.StaleCompletions}")));
            problems.AddRange(pool.OutstandingStacks());
            // Which sessions ran, and how each ended: the leak is usually in one whose connection a fault touched.
            problems.Add("sessions: " + string.Join(", ", outcomes.Select(o =>
                $"{o.Session.Name}({string.Join('/', o.Session.Ports)}{(plan.TouchedPorts.Keys.Intersect(o.Session.Ports).Any() ? " touched" : "")})" +
                (o.Error is null ? "" : ": " + o.Error.GetType().Name))));
            problems.AddRange(Server.LiveConnections.Where(c => c.Value != "processed").Select(c => $"h2 connection {c.Key}: {c.Value}"));
        }

        problems.AddRange(pool.Errors());
        if (Iocp)
        {
            if (!warmUp && Handles.Measurable && !await Eventually(() => Handles.Count() <= handlesBefore, TimeSpan.FromSeconds(5)))
            {
                problems.Add($"handles: {Handles.Count()} open after the run, {handlesBefore} before");
            }
        }
        else if (!warmUp && !await Eventually(() => Descriptors.Count() <= fdsBefore, TimeSpan.FromSeconds(5)))
        {
            problems.Add($"descriptors: {Descriptors.Count()} open after the run, {fdsBefore} before; new: " +
                         string.Join(' ', Descriptors.Targets().Except(fdTargetsBefore).Take(12)));
        }

        if (warmUp)
        {
            if (problems.Count != 0)
            {
                Console.WriteLine("warm-up run (no faults) FAILED:\n  " + string.Join("\n  ", problems));
            }

            return (problems.Count == 0, 0);
        }

        long handlerFaults = dispatchers.Sum(d => d.HandlerFaults);
        string kinds = string.Join(", ", plan.Counts.OrderBy(k => k.Key).Select(k => $"{k.Key}={k.Value}"));
        string summary = $"seed {seed}: {(problems.Count == 0 ? "ok" : "FAILED")} preset={presetName} faults={plan.Injected} " +
                         $"touched={plan.TouchedPorts.Count} killed={(plan.Killed.Count == 0 ? "none" : string.Join(',', plan.Killed.Keys.Select(k => "#" + k)) + "(" + plan.KillModeName + ")")} " +
                         $"sessions={outcomes.Count} errors={sessionErrors}{(stopMidway ? " stopped-midway" : "")}{(backlogs != 0 ? $" cq-backlogs={backlogs}" : "")}{(handlerFaults != 0 ? $" handler-faults={handlerFaults}" : "")} {stopwatch.Elapsed.TotalSeconds:F1}s";
        Console.WriteLine(summary);
        if (verbose || problems.Count != 0)
        {
            Console.WriteLine("  faults: " + kinds);
        }

        foreach (string problem in problems)
        {
            Console.WriteLine("  " + problem);
        }

        return (problems.Count == 0, plan.Injected);
    }

    /// <summary>Stops the host with its shutdown timeout and disposes it; returns how long that took.</summary>
    private static async Task<TimeSpan> StopAsync(WebApplication app, List<string> problems)
    {
        var stop = Stopwatch.StartNew();
        using (var cts = new CancellationTokenSource(ShutdownTimeout))
        {
            try
            {
                await app.StopAsync(cts.Token);
            }
            catch (Exception ex)
            {
                problems.Add($"stop threw {ex.GetType().Name}: {ex.Message}");
            }
        }

        await app.DisposeAsync();
        return stop.Elapsed;
    }

    private static void SetCurrent(ProactorFaultPlan? plan)
    {
        if (Iocp)
        {
            IocpFaultPlan.Current = (IocpFaultPlan?)plan;
        }
        else
        {
            IoUringFaultPlan.Current = (IoUringFaultPlan?)plan;
        }
    }

    private static bool Excused(Outcome outcome, ProactorFaultPlan plan, ProactorDispatcher[] dispatchers, int serverPort, Dictionary<int, int> listenerOn)
    {
        Session session = outcome.Session;
        if (session.Ports.Any(p => plan.TouchedPorts.ContainsKey(p)))
        {
            return true;
        }

        if (Iocp && listenerOn.TryGetValue(serverPort, out int listenerDispatcher) && plan.Killed.ContainsKey(listenerDispatcher)
            && IsConnectionFailure(outcome.Error))
        {
            // The session's listener was on the killed dispatcher and closed for good: a connection it refused, or
            // that waited in its backlog when it closed and was reset, failed without a fault touching its port.
            return true;
        }

        // A killed dispatcher takes down what it served and what its accepts had taken from the backlog until its
        // ring closed: a session that started before that may have been one of them.
        foreach ((int id, long _) in plan.Killed)
        {
            ProactorDispatcher killed = dispatchers.First(d => d.Id == id);
            if (!killed.HasEnded || session.Started <= killed.EndedTimestamp)
            {
                return true;
            }
        }

        return false;
    }

    /// <summary>A socket-level failure (refused, reset) anywhere in the chain: what a listener that closed causes.</summary>
    private static bool IsConnectionFailure(Exception? error)
    {
        for (Exception? e = error; e is not null; e = e.InnerException)
        {
            if (e is System.Net.Sockets.SocketException or IOException or System.Net.WebSockets.WebSocketException)
            {
                return true;
            }
        }

        return false;
    }

    private static async Task<bool> Eventually(Func<bool> condition, TimeSpan timeout)
    {
        var deadline = Stopwatch.StartNew();
        while (!condition())
        {
            if (deadline.Elapsed > timeout)
            {
                return false;
            }

            GC.Collect();
            GC.WaitForPendingFinalizers();
            await Task.Delay(20);
        }

        return true;
    }
}

internal static class Descriptors
{
    /// <summary>Sockets, rings and event descriptors (files the runtime maps lazily, assemblies, are left out).</summary>
    public static int Count() => Targets().Count;

    public static HashSet<string> Targets()
    {
        var targets = new HashSet<string>();
        foreach (string fd in Directory.GetFiles("/proc/self/fd"))
        {
            try
            {
                string? target = new FileInfo(fd).LinkTarget;
                if (target is not null && (target.StartsWith("socket:", StringComparison.Ordinal) || target.StartsWith("anon_inode:", StringComparison.Ordinal)))
                {
                    targets.Add(Path.GetFileName(fd) + "->" + target);
                }
            }
            catch (IOException)
            {
            }
        }

        return targets;
    }
}

/// <summary>
/// The process's handle count, where the OS reports it (under Wine it may not: then the handle check is skipped,
/// and the run says so once).
/// </summary>
internal static class Handles
{
    /// <summary>
    /// Wine reports the size of its handle table (in steps of 256), not the handles in use: a leak of a few would not
    /// show, so the check is left out there.
    /// </summary>
    public static readonly bool Measurable = !UnderWine() && Count() > 0;

    private static bool UnderWine()
        => NativeLibrary.TryLoad("ntdll.dll", out nint ntdll) && NativeLibrary.TryGetExport(ntdll, "wine_get_version", out _);

    public static int Count()
    {
        using var process = Process.GetCurrentProcess();
        return process.HandleCount;
    }
}
