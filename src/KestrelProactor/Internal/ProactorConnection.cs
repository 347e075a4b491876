using System.Buffers;
using System.IO.Pipelines;
using System.Net;
using System.Runtime.InteropServices;
using KestrelProactor.Dispatching;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Connections.Features;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.Extensions.Logging;

namespace KestrelProactor.Internal;

/// <summary>
/// One accepted connection, the same for every backend. Its state machine runs on its dispatcher's thread:
/// receive completions feed the input pipe, the output pipe is drained by sends, and the descriptor is closed
/// by the dispatcher only after every operation of the connection has completed.
/// <para>
/// Life: Start → (receive loop ‖ send loop) → the send side ends (application completed its output: FIN; or
/// abort: RST; or a send error) → pending operations are cancelled → close → ConnectionClosed fires and
/// DisposeAsync returns.
/// </para>
/// </summary>
internal sealed partial class ProactorConnection : ConnectionContext,
    IOperationOwner,
    IConnectionIdFeature,
    IConnectionTransportFeature,
    IConnectionItemsFeature,
    IConnectionLifetimeFeature,
    IConnectionEndPointFeature,
    IMemoryPoolFeature,
    IConnectionSocketFeature,
    IProactorConnectionFeature
{
    private static long s_lastId;

    private readonly IDuplexPipe _transportSide;
    private const long StreamingSendSizeLimit = 256 * 1024;
    private readonly long _streamingSendSize;
    private readonly ILogger _logger;
    private readonly CancellationTokenSource _connectionClosedSource = new();
    private readonly TaskCompletionSource _closedTcs = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private IDictionary<object, object?>? _items;
    private string? _connectionId;
    private int _started;
    private int _holdsPoolLease;
    private readonly MemoryPool<byte> _memoryPool;
    private readonly ProactorQuarantinePool _kernelMemory;

    public ProactorConnection(ProactorDispatcher dispatcher, SafeHandle socket, bool isTcp, EndPoint? localEndPoint, EndPoint? remoteEndPoint, ILogger logger)
    {
        Dispatcher = dispatcher;
        Socket = socket;
        IsTcp = isTcp;
        LocalEndPoint = localEndPoint;
        RemoteEndPoint = remoteEndPoint;
        _logger = logger;

        ProactorTransportOptions options = dispatcher.Options;
        long maxRead = options.MaxReadBufferSize ?? 0;
        long maxWrite = options.MaxWriteBufferSize ?? 0;
        PipeScheduler applicationScheduler = options.UnsafePreferInlineScheduling ? PipeScheduler.Inline : PipeScheduler.ThreadPool;
        // The pool stays undisposed until this connection's pipes are done (DisposeAsync). A dispatcher that has
        // already ended may have given its pool back: the connection, released at once, then uses the shared pool.
        bool leased = dispatcher.TryAcquirePoolLease();
        _holdsPoolLease = leased ? 1 : 0;
        MemoryPool<byte> pool = leased ? dispatcher.MemoryPool : MemoryPool<byte>.Shared;
        _memoryPool = pool;
        // The pipes the kernel reads and writes take their blocks through a quarantine (see OnDispatcherFailed).
        // Output blocks go through the backend's output pool (zero-copy sends hold theirs until the kernel's notification).
        _kernelMemory = new ProactorQuarantinePool(leased ? dispatcher.OutputMemoryPool : pool);
        // The quarantine reports no block limit (it serves larger requests itself): the pipes' smallest segment stays
        // within a block of a pool with blocks under the pipes' usual 4 KiB, as it was when the pipe saw the pool's.
        int blockSize = _kernelMemory.BlockSize;
        int minimumSegmentSize = blockSize > 0 ? Math.Min(4096, blockSize) : -1;

        // Input: the dispatcher writes, the application reads; its reads resume on the pool, or inline on the
        // dispatcher if asked. Where the backend lends its receive buffers, the application reads the very
        // buffers the kernel filled; otherwise a pipe holds copies (received straight into its memory).
        PipeReader inputReader;
        if (dispatcher.ReceiveBufferLender is { } lender)
        {
            _lendingInput = new ProactorInputPipe(lender, pool, dispatcher, options.UnsafePreferInlineScheduling, maxRead, OnLendingResumed);
            _lentBufferCap = Math.Max(2, Math.Min(dispatcher.LendableBufferCount / 8, maxRead <= 0 ? int.MaxValue : (int)Math.Min(int.MaxValue, (maxRead / Math.Max(1, options.ReceiveBufferSize)) + 1)));
            inputReader = _lendingInput;
        }
        else
        {
            // The writer resumes (after back-pressure) on the dispatcher.
            var input = new Pipe(new PipeOptions(_kernelMemory, applicationScheduler, dispatcher, maxRead, maxRead / 2, minimumSegmentSize, useSynchronizationContext: false));
            Input = input.Writer;
            _copyingReader = new ProactorCopyingInputReader(input.Reader, this);
            inputReader = _copyingReader;
        }

        // Output: the application writes, the dispatcher reads and sends. A flush on any thread becomes a
        // work item on the dispatcher, so the send it causes is batched with the rest of that pass; a flush on a
        // busy pool may leave the dispatcher's wake-up to the pool (ProactorDispatcher.Wakeups.cs).
        var output = new Pipe(new PipeOptions(_kernelMemory, dispatcher.OutputScheduler, applicationScheduler, maxWrite, maxWrite / 2, minimumSegmentSize, useSynchronizationContext: false));

        Output = output.Reader;
        // Streaming sends are gathered up to half the pause threshold (at most 256 KiB), so the application rarely meets it.
        _streamingSendSize = maxWrite > 0 ? Math.Min(StreamingSendSizeLimit, Math.Max(1, maxWrite / 2)) : StreamingSendSizeLimit;
        _transportSide = new DuplexPipe(inputReader, new ProactorOutputWriter(output.Writer, this));
        Transport = _transportSide;
        ConnectionClosed = _connectionClosedSource.Token;
    }

    public ProactorDispatcher Dispatcher { get; }

    /// <summary>
    /// The descriptor. Closed only by the dispatcher's close operation (or the handle's release on failure), and only
    /// once the application's views of it are released (see <see cref="TryRetireApplicationViews"/>).
    /// </summary>
    public SafeHandle Socket { get; }

    public bool IsTcp { get; }

    /// <summary>The backend's state for the send in flight (pinned buffers, native iovecs); null otherwise.</summary>
    public object? SendState { get; set; }

    /// <summary>The backend's per-connection state (IOCP: its operation slots); null until the backend sets it.</summary>
    public object? BackendState { get; set; }

    /// <summary>The transport's end of the input pipe when receives are copied (no lending backend); else null.</summary>
    public PipeWriter? Input { get; }

    /// <summary>The transport's end of the output pipe (the dispatcher sends what it reads here).</summary>
    public PipeReader Output { get; }

    public OperationToken Token { get; set; }

    public string DisplayName => ConnectionId;

    public override string ConnectionId
    {
        get => _connectionId ??= "P" + Interlocked.Increment(ref s_lastId).ToString("X8");
        set => _connectionId = value;
    }

    public override IDictionary<object, object?> Items
    {
        get => _items ??= new ConnectionItems();
        set => _items = value;
    }

    /// <summary>The application's ends of the pipes. Middleware (TLS) may replace it with a wrapping pipe.</summary>
    public override IDuplexPipe Transport { get; set; }

    /// <summary>Fires after the descriptor is closed. Settable, as on Kestrel's own transports.</summary>
    public override CancellationToken ConnectionClosed { get; set; }

    public override EndPoint? LocalEndPoint { get; set; }

    public override EndPoint? RemoteEndPoint { get; set; }

    MemoryPool<byte> IMemoryPoolFeature.MemoryPool => _memoryPool;

    string IProactorConnectionFeature.Backend => Dispatcher.BackendName;

    int IProactorConnectionFeature.DispatcherId => Dispatcher.Id;

    SafeHandle IProactorConnectionFeature.SocketHandle => GetApplicationHandle();

    /// <summary>
    /// A <see cref="System.Net.Sockets.Socket"/> over the connection's descriptor, made on first use, that does not own
    /// it: the transport closes the descriptor (after disposing this Socket, and not while a call on it is in
    /// progress). For socket options and queries (the peer's address, its credentials) only: no I/O may be done on it,
    /// as it would interleave with the transport's own. After the connection closed, asking for it throws
    /// <see cref="ObjectDisposedException"/> when it was never made, and a Socket made before is disposed.
    /// </summary>
    System.Net.Sockets.Socket IConnectionSocketFeature.Socket => GetApplicationSocket();

    /// <summary>Hands the connection to its dispatcher: from now on it receives and sends.</summary>
    public void Start()
    {
        // A full fence (pairs with Abort's exchange of the reason): see Abort.
        if (Interlocked.Exchange(ref _started, 1) == 0)
        {
            TestStartHook?.Invoke(this);
            Dispatcher.Schedule(static state => ((ProactorConnection)state!).StartOnDispatcher(), this);
        }
    }

    private void StartOnDispatcher()
    {
        Dispatcher.Register(this);
        _registered = true;
        if (Volatile.Read(ref _abortReason) is not null)
        {
            // Aborted before it started, or between Start's publication and this: the abort scheduled then (if any)
            // found the connection unregistered and left it to this.
            AbortOnDispatcher();
            return;
        }

        ArmReceive();
        ReadOutput();
    }

    public override async ValueTask DisposeAsync()
    {
        _transportSide.Input.Complete();
        _transportSide.Output.Complete();
        if (Volatile.Read(ref _started) == 0)
        {
            // Never handed out by AcceptAsync (the listener is shutting down): close it from here.
            Start();
        }

        await _closedTcs.Task.ConfigureAwait(false);
        _connectionClosedSource.Dispose();
        // Both pipes are done: their blocks are back, unless the kernel may still use one (KeepForKernel), in which
        // case the pool must never be disposed under it.
        if (!_memoryKeptForKernel && Interlocked.Exchange(ref _holdsPoolLease, 0) != 0)
        {
            Dispatcher.ReleasePoolLease();
        }
    }

    /// <summary>Tests only: runs first in this connection's fault handling, to make that throw in turn.</summary>
    internal static Action<ProactorConnection>? TestFaultHook { get; set; }

    void IOperationOwner.OnHandlerFault(OperationKind kind, bool operationEnded, Exception exception)
    {
        try
        {
            TestFaultHook?.Invoke(this);
            Abort(new ConnectionAbortedException($"The transport failed while handling {kind} for this connection.", exception));
        }
        finally
        {
            if (operationEnded)
            {
                // The handler may have thrown before its own bookkeeping: the operation is over whatever it did, and
                // the close must not wait for it.
                ForgetEndedOperation(kind);
            }
        }
    }

    private sealed class DuplexPipe(PipeReader input, PipeWriter output) : IDuplexPipe
    {
        public PipeReader Input { get; } = input;

        public PipeWriter Output { get; } = output;
    }
}
