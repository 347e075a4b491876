using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net;
using KestrelProactor.Internal;

namespace KestrelProactor.Dispatching;

/// <summary>
/// What every backend's seeded fault plan shares (the io_uring one, <c>IoUringFaultPlan</c>, and the IOCP one,
/// <c>IocpFaultPlan</c>): the seed and rate, the kill the seed draws, the families a run allows, and the books a run's
/// checks read: how many faults went in, of which kinds, which client ports a fault touched (a connection whose client
/// port is listed may end with an error; any other must deliver every byte), and which dispatchers it killed on purpose.
/// Internal, set only by tests; a dispatcher created while its backend's plan is null has no injector.
/// </summary>
internal abstract class ProactorFaultPlan
{
    private readonly ConcurrentDictionary<string, long> _counts = new();
    private readonly ConcurrentDictionary<int, string> _touchedPorts = new();
    private readonly ConcurrentDictionary<int, long> _killed = new();

    /// <param name="seed">The seed of the plan and of every dispatcher's random stream.</param>
    /// <param name="rate">The chance per eligible event that a fault goes in.</param>
    /// <param name="killModes">How many kill modes the backend has (0 is no kill): one is drawn from the seed.</param>
    protected ProactorFaultPlan(int seed, double rate, int killModes)
    {
        Seed = seed;
        Rate = rate;
        var random = new Random(seed);
        // At most one dispatcher is killed, and only when the plan asks for kills: a run needs a dispatcher that lives.
        KillModeIndex = random.Next(0, killModes);
        KillDispatcher = random.Next(0, 2);
        KillAfterCompletions = random.Next(20, 400);
    }

    public int Seed { get; }

    /// <summary>The chance, per eligible event (a completion, a submission, an enter), that a fault goes in.</summary>
    public double Rate { get; }

    /// <summary>Whether this plan may kill a dispatcher (only with two or more: one must live).</summary>
    public bool AllowKill { get; init; }

    /// <summary>The kill mode the seed drew, as the backend's enum value.</summary>
    protected int KillModeIndex { get; }

    /// <summary>The kill mode's name, for a run's summary line.</summary>
    public abstract string KillModeName { get; }

    public int KillDispatcher { get; }

    public long KillAfterCompletions { get; }

    /// <summary>The fault families this plan may inject (null: all; the names are the backend's). For narrowing a failing seed down.</summary>
    public IReadOnlySet<string>? Only { get; init; }

    /// <summary>Whether the plan injects faults of <paramref name="family"/>.</summary>
    public bool Allows(string family) => Only is null || Only.Contains(family);

    /// <summary>Where a plan reports what a kill found (for narrowing a failure down); null: nowhere.</summary>
    public Action<string>? Trace { get; init; }

    /// <summary>Faults injected so far, of every kind.</summary>
    public long Injected => _counts.Values.Sum();

    public IReadOnlyDictionary<string, long> Counts => _counts;

    /// <summary>Client ports (the peers' ports) of connections a fault touched, with the first fault's name.</summary>
    public IReadOnlyDictionary<int, string> TouchedPorts => _touchedPorts;

    /// <summary>Dispatchers killed on purpose, with the <see cref="Stopwatch"/> timestamp of the kill.</summary>
    public IReadOnlyDictionary<int, long> Killed => _killed;

    internal void Count(string fault) => _counts.AddOrUpdate(fault, 1, static (_, n) => n + 1);

    internal void Touch(int port, string fault)
    {
        if (port > 0)
        {
            _touchedPorts.TryAdd(port, fault);
        }
    }

    /// <summary>A fault that touched <paramref name="connection"/>: counted, and its client port listed.</summary>
    internal void Fault(ProactorConnection connection, string fault)
    {
        Count(fault);
        Touch(PortOf(connection), fault);
    }

    /// <summary>
    /// <paramref name="dispatcher"/> is being killed (on its thread, before its loop throws): every connection on it is
    /// touched, and the kill is recorded and counted.
    /// </summary>
    internal void RecordKill(ProactorDispatcher dispatcher, string how)
    {
        foreach (IOperationOwner owner in dispatcher.OwnersForTests())
        {
            if (owner is ProactorConnection connection)
            {
                Touch(PortOf(connection), "killed dispatcher");
                Trace?.Invoke($"kill #{dispatcher.Id}: port {PortOf(connection)} inFlight={dispatcher.InFlightOf(connection)} {connection.DescribeForTests()}");
            }
        }

        _killed.TryAdd(dispatcher.Id, Stopwatch.GetTimestamp());
        Count("kill: " + how);
    }

    /// <summary>The connection's client port (the peer's), which names it in <see cref="TouchedPorts"/>; 0 when unknown.</summary>
    internal static int PortOf(ProactorConnection connection) => (connection.RemoteEndPoint as IPEndPoint)?.Port ?? 0;
}

/// <summary>
/// One dispatcher's share of a <see cref="ProactorFaultPlan"/>: its random stream (seeded from the plan's seed and the
/// dispatcher's id) and the completions it holds back (<typeparamref name="TCompletion"/>: the backend's form of one).
/// Dispatcher thread only; it only decides, the backend's dispatcher does what each fault means.
/// </summary>
internal abstract class ProactorFaultInjector<TCompletion>
{
    private readonly Random _random;
    // Completions held back, in arrival order, with the pass from which they may go on and the key that keeps one
    // owner's completions in their order (an owner's completions are never reordered among themselves).
    private readonly List<(TCompletion Completion, ulong Key, long DuePass)> _held = new();

    protected ProactorFaultInjector(ProactorFaultPlan plan, int dispatcherId)
    {
        BasePlan = plan;
        DispatcherId = dispatcherId;
        _random = new Random(unchecked(plan.Seed * 7919 + dispatcherId * 104729 + 17));
    }

    private ProactorFaultPlan BasePlan { get; }

    public int DispatcherId { get; }

    /// <summary>Passes of the loop seen so far.</summary>
    public long Pass { get; private set; }

    /// <summary>Completions handled so far.</summary>
    public long Completions { get; set; }

    /// <summary>True once this dispatcher's kill went in.</summary>
    public bool Killed { get; set; }

    /// <summary>Whether this dispatcher is the one the plan kills and has not been killed yet.</summary>
    protected bool MayKill => BasePlan.AllowKill && !Killed && DispatcherId == BasePlan.KillDispatcher;

    public bool HasHeld => _held.Count != 0;

    public int HeldCount => _held.Count;

    public void BeginPass() => Pass++;

    /// <summary>True with the plan's rate.</summary>
    public bool Roll() => _random.NextDouble() < BasePlan.Rate;

    /// <summary>A number in [min, max).</summary>
    public int Next(int min, int max) => _random.Next(min, max);

    public T Pick<T>(params T[] choices) => choices[_random.Next(choices.Length)];

    public bool IsHeld(ulong key)
    {
        foreach (var entry in _held)
        {
            if (entry.Key == key)
            {
                return true;
            }
        }

        return false;
    }

    /// <summary>Holds a completion back for 1-4 passes, or as long as the last held completion of the same key.</summary>
    public void Hold(in TCompletion completion, ulong key)
    {
        long due = Pass + _random.Next(1, 5);
        foreach (var entry in _held)
        {
            if (entry.Key == key)
            {
                due = Math.Max(due, entry.DuePass);
            }
        }

        _held.Add((completion, key, due));
    }

    /// <summary>Takes the held completions that are due (all of them when <paramref name="all"/>), in arrival order.</summary>
    public void TakeDue(List<TCompletion> destination, bool all)
    {
        int kept = 0;
        for (int i = 0; i < _held.Count; i++)
        {
            var entry = _held[i];
            if (all || entry.DuePass <= Pass)
            {
                destination.Add(entry.Completion);
            }
            else
            {
                _held[kept++] = entry;
            }
        }

        _held.RemoveRange(kept, _held.Count - kept);
    }
}
