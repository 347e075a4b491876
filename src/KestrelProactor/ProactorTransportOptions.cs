using System.Buffers;

namespace KestrelProactor;

/// <summary>
/// Options for the proactor transport. Names match Kestrel's socket transport where the meaning is the same.
/// </summary>
public sealed class ProactorTransportOptions
{
    // Kestrel's switch, read by its socket transport too.
    private static readonly bool s_finOnErrorSwitch =
        AppContext.TryGetSwitch("Microsoft.AspNetCore.Server.Kestrel.FinOnError", out bool finOnError) && finOnError;

    /// <summary>
    /// The configuration section the hosting startup binds these options from: <c>"Kestrel:Proactor"</c>, so
    /// <c>appsettings.json</c> holds them under <c>"Kestrel": { "Proactor": { ... } }</c> and environment variables
    /// read <c>Kestrel__Proactor__DispatcherCount</c>. Pass <c>configuration.GetSection(ConfigurationSectionName)</c>
    /// to <c>UseProactorTransport(IConfiguration)</c> to use the same place.
    /// </summary>
    public const string ConfigurationSectionName = "Kestrel:Proactor";

    /// <summary>
    /// The number of dispatchers: each owns one io_uring ring (or completion port) and one named thread.
    /// </summary>
    /// <remarks>
    /// Allowed: 1 to 256. Unless set, one per two processors (at least one) in the default thread-pool mode, where
    /// the dispatchers only move bytes and the pool's threads run the application, so the pool keeps cores of its
    /// own; one per processor with <see cref="UnsafePreferInlineScheduling"/>, where the application runs on the
    /// dispatchers.
    /// </remarks>
    public int DispatcherCount
    {
        get => _dispatcherCount ?? DefaultDispatcherCount(Environment.ProcessorCount, UnsafePreferInlineScheduling);
        set => _dispatcherCount = value;
    }

    private int? _dispatcherCount;

    /// <summary>Whether <see cref="DispatcherCount"/> was set, rather than following the scheduling mode.</summary>
    internal bool DispatcherCountIsSet => _dispatcherCount is not null;

    /// <summary>
    /// The dispatcher count used when <see cref="DispatcherCount"/> is not set: <paramref name="processorCount"/>
    /// with inline scheduling, half of it (at least one) otherwise.
    /// </summary>
    internal static int DefaultDispatcherCount(int processorCount, bool inlineScheduling)
        => inlineScheduling ? Math.Max(1, processorCount) : Math.Max(1, processorCount / 2);

    /// <summary>
    /// Submission queue entries per ring; the completion queue is sized from it and from <see cref="CompletionQueueSize"/>.
    /// </summary>
    /// <remarks>Defaults to 256. Allowed: a power of two from 4 to 32768.</remarks>
    public int SubmissionQueueSize { get; set; } = 256;

    /// <summary>
    /// Completion queue entries per ring. 0 lets the transport choose (16 x <see cref="SubmissionQueueSize"/>, at least 4096).
    /// </summary>
    /// <remarks>Defaults to 0. Allowed: 0, or a power of two not smaller than <see cref="SubmissionQueueSize"/> and at most 1048576.</remarks>
    public int CompletionQueueSize { get; set; }

    /// <summary>
    /// The number of receive buffers in each dispatcher's provided buffer ring.
    /// </summary>
    /// <remarks>Defaults to 1024. Allowed: a power of two from 2 to 32768.</remarks>
    public int ReceiveBufferCount { get; set; } = 1024;

    /// <summary>
    /// The size in bytes of each receive buffer.
    /// </summary>
    /// <remarks>Defaults to 16384. Allowed: 512 to 1048576.</remarks>
    public int ReceiveBufferSize { get; set; } = 16 * 1024;

    /// <summary>
    /// The bytes buffered from the network, per connection, before the transport stops receiving (resumes at half).
    /// </summary>
    /// <remarks>Defaults to 1 MiB. <c>null</c> or 0 means unbounded.</remarks>
    public long? MaxReadBufferSize { get; set; } = 1024 * 1024;

    /// <summary>
    /// The bytes the application may buffer for sending, per connection, before its flushes wait (resume at half).
    /// </summary>
    /// <remarks>
    /// Defaults to 1 MiB, as <see cref="MaxReadBufferSize"/> (the socket transport's default is 64 KiB). The sends of
    /// one connection are made by its dispatcher thread, which sleeps when there is nothing to send: a streaming
    /// response needs room to run ahead of it, or the application and the dispatcher take turns, each waking the
    /// other for every 32 KiB (a 1 GiB download went from about 0.6x to 1.3-1.7x the socket transport's speed).
    /// Memory is taken only while output waits; lower it where many slow readers could each pin that much.
    /// <c>null</c> or 0 means unbounded.
    /// </remarks>
    public long? MaxWriteBufferSize { get; set; } = 1024 * 1024;

    /// <summary>Whether TCP_NODELAY is set on accepted TCP connections.</summary>
    /// <remarks>Defaults to <c>true</c>.</remarks>
    public bool NoDelay { get; set; } = true;

    /// <summary>The listen backlog.</summary>
    /// <remarks>Defaults to 512. Allowed: 1 or more.</remarks>
    public int Backlog { get; set; } = 512;

    /// <summary>
    /// When <c>true</c>, the application's pipe continuations run on the dispatcher thread instead of the thread pool.
    /// Fastest, but a handler that blocks stalls every connection of that dispatcher.
    /// </summary>
    /// <remarks>Defaults to <c>false</c>.</remarks>
    public bool UnsafePreferInlineScheduling { get; set; }

    /// <summary>
    /// Whether a connection aborted with a reason ends with FIN instead of RST. Kestrel aborts with a reason when
    /// it gives up on a connection: a protocol error, a timeout, a response that does not satisfy the minimum data
    /// rate, the host's stop. By default such a connection is reset (RST: the kernel drops what is still unsent,
    /// and the peer's next read fails); with this option it is shut down gracefully (FIN: what was already sent
    /// still arrives, and the peer reads end-of-stream), as with Kestrel's socket transport under the same switch.
    /// An abort without a reason, Kestrel's way of saying that the client closed gracefully, always ends with FIN.
    /// Either way the event is logged at Debug: <c>ConnectionWriteRst</c> or <c>ConnectionWriteFin</c>.
    /// </summary>
    /// <remarks>
    /// Defaults to the AppContext switch <c>Microsoft.AspNetCore.Server.Kestrel.FinOnError</c> (<c>false</c> when it
    /// is not set), the switch Kestrel's socket transport reads.
    /// </remarks>
    public bool FinOnError { get; set; } = s_finOnErrorSwitch;

    /// <summary>
    /// When <c>true</c> (the default), a bind that cannot use the native proactor backend (io_uring disabled or
    /// denied, missing opcodes, unsupported platform) binds with Kestrel's socket transport and logs one warning
    /// naming the reason. When <c>false</c>, such a bind throws <see cref="ProactorUnavailableException"/>.
    /// </summary>
    /// <remarks>Defaults to <c>true</c>.</remarks>
    public bool AllowSocketTransportFallback { get; set; } = true;

    /// <summary>
    /// Gives each io_uring dispatcher a kernel thread that polls its submission queue
    /// (<c>IORING_SETUP_SQPOLL</c>): operations reach the kernel without an <c>io_uring_enter</c> while that thread
    /// is awake, and the dispatcher enters only to wait for completions or to wake the thread. The thread spins on
    /// a core of its own for <see cref="SubmissionQueuePollingIdle"/> after the last submission, so it pays only
    /// where cores are spare; on a machine whose cores the application needs it costs throughput. A kernel that
    /// refuses it gets the usual ring (with <c>DEFER_TASKRUN</c>, which the kernel does not allow beside it), and
    /// <c>SQPOLL</c> is named in the backend's refused features. io_uring only.
    /// </summary>
    /// <remarks>Defaults to <c>false</c>.</remarks>
    public bool SubmissionQueuePolling { get; set; }

    /// <summary>
    /// How long the submission-polling thread (<see cref="SubmissionQueuePolling"/>) spins with nothing to submit
    /// before it sleeps; the next submission after that wakes it with a system call.
    /// </summary>
    /// <remarks>Defaults to 10 milliseconds. Allowed: 1 millisecond to 10 seconds, in whole milliseconds.</remarks>
    public TimeSpan SubmissionQueuePollingIdle { get; set; } = TimeSpan.FromMilliseconds(10);

    /// <summary>
    /// Pins each io_uring dispatcher thread to one CPU: dispatcher n to the n-th CPU the process may use (wrapping
    /// round when there are more dispatchers than CPUs). A ring's completions and the kernel's socket work done on
    /// its thread then stay on one core's caches; the application's threads and a submission-polling thread are
    /// not pinned. Pays where the dispatchers own their cores; where the application's threads compete for the same
    /// cores, a pinned dispatcher cannot move away from a busy one. A CPU the kernel refuses leaves that thread
    /// unpinned, with a warning. io_uring only.
    /// </summary>
    /// <remarks>Defaults to <c>false</c>.</remarks>
    public bool DispatcherAffinity { get; set; }

    /// <summary>
    /// Accepts on every dispatcher: each TCP endpoint gets one listen socket per dispatcher, bound with SO_REUSEPORT,
    /// and the kernel spreads incoming connections over them; each dispatcher accepts its own connections and keeps
    /// them, instead of one dispatcher accepting for the endpoint and handing every other connection to another
    /// ring's thread. Each socket has its own backlog of <see cref="Backlog"/>, and the spread follows a hash of the
    /// connection's addresses, not the dispatchers' load. Linux only; Unix domain sockets, listen handles and IOCP
    /// keep one listen socket per endpoint.
    /// </summary>
    /// <remarks>Defaults to <c>false</c>.</remarks>
    public bool AcceptOnEveryDispatcher { get; set; }

    /// <summary>
    /// Disables multishot accept and multishot receive even where the kernel has them (single-shot operations
    /// are re-armed after each completion instead). For testing the older-kernel tier.
    /// </summary>
    /// <remarks>Defaults to <c>false</c>.</remarks>
    public bool DisableMultishot { get; set; }

    /// <summary>
    /// Sends of at least this many bytes use zero-copy sends (<c>IORING_OP_SEND_ZC</c>/<c>SENDMSG_ZC</c>, 6.0+):
    /// the kernel sends from the pipe's memory, which stays pinned until its notification. Worth it for large
    /// responses on real NICs; on loopback it only costs (the kernel copies anyway), hence off by default.
    /// </summary>
    /// <remarks>
    /// Defaults to 0 (off). Allowed: 0, or any positive number of bytes. Below a few KiB a zero-copy send costs more
    /// than the copy it saves (each waits for a second completion, its notification); small values are for testing
    /// the path, as the test suite's zero-copy preset (1: every send) does.
    /// </remarks>
    public int ZeroCopySendThreshold { get; set; }

    /// <summary>
    /// How long a connection that streams a response (a second send with no input since the first) waits before it
    /// reads its output again, when its last send was small. The application's flushes in that time go out in one
    /// send instead of one send each, which on loopback costs a wake-up of the receiver per send. A reply to a
    /// request is never delayed: input arriving ends the wait. io_uring only; <see cref="TimeSpan.Zero"/> turns it off.
    /// </summary>
    /// <remarks>Defaults to 50 microseconds. Allowed: 0 to 1 millisecond.</remarks>
    public TimeSpan OutputCoalescingDelay { get; set; } = TimeSpan.FromMicroseconds(50);

    /// <summary>
    /// How long a dispatcher that has just handed one request to an otherwise idle thread pool keeps looking for the
    /// response before it sleeps. A response flushed in that time reaches the dispatcher without a wake-up (a system
    /// call on the flushing thread and a context switch here), which is most of what a lone request/response exchange
    /// costs beyond the socket transport's. Only in thread-pool mode, only after a pass that woke exactly one reader,
    /// and only when the pool has no other work queued (a busy machine has better use for the core). io_uring only;
    /// <see cref="TimeSpan.Zero"/> turns it off.
    /// </summary>
    /// <remarks>Defaults to 50 microseconds. Allowed: 0 to 1 millisecond.</remarks>
    public TimeSpan HandOffSpinTime { get; set; } = TimeSpan.FromMicroseconds(50);

    /// <summary>
    /// Receives straight into pipe memory instead of a provided buffer ring (the tier for kernels before 5.19).
    /// For tests of that tier on newer kernels.
    /// </summary>
    internal bool DisableBufferRing { get; set; }

    /// <summary>
    /// The memory pool for connection pipes. Kestrel's pool (from <c>IMemoryPoolFactory&lt;byte&gt;</c>) is used when <c>null</c>.
    /// </summary>
    /// <remarks>
    /// Defaults to <c>null</c>. Called once per dispatcher when the transport starts. The pools it returns belong to
    /// the transport, as the pools Kestrel's socket transport takes from its factory belong to it: each distinct
    /// instance is disposed exactly once, after the last dispatcher and the last connection using it are done with
    /// it. Returning the same pool on every call is supported (it is disposed once, when the transport is done with
    /// it); a pool that must outlive the transport, or that several transport factories share, must ignore
    /// <see cref="IDisposable.Dispose"/> or not come from this option. <see cref="MemoryPool{T}.Shared"/> is never disposed.
    /// </remarks>
    public Func<MemoryPool<byte>>? MemoryPoolFactory { get; set; }
}
