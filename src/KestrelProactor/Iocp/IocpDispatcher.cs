using System.Net;
using System.Runtime.InteropServices;
using KestrelProactor.Dispatching;
using KestrelProactor.Internal;
using static KestrelProactor.Interop.Windows.Interop;

namespace KestrelProactor.Iocp;

/// <summary>
/// The IOCP dispatcher: one completion port and one thread. Each pass of the loop runs queued work, then dequeues
/// up to <see cref="MaxEntries"/> packets with one <c>GetQueuedCompletionStatusEx</c> (blocking only when there is
/// nothing else to do) and runs their completion handlers.
/// <para>
/// Sockets are set to skip the completion port on success: an operation that completes at once queues no packet.
/// Its result is then handled from this dispatcher's local work queue, later in the same pass, never inside the
/// caller's stack: the shared connection code submits from its handlers and does not expect a completion to run
/// before the submission returns. Where the port refuses that mode for a socket, an immediate success of its
/// operations is left to the packet it still queues, so each operation is completed once, by its own packet. Shutdown and close are plain synchronous calls delivered the same way, so every
/// operation reaches the shared code through <see cref="ProactorDispatcher.DispatchCompletion"/> exactly once.
/// </para>
/// <para>
/// Receives wait for data with a zero-byte <c>WSARecv</c>; only when it completes is pipe memory rented and a real
/// <c>WSARecv</c> issued, so idle connections hold no buffer (Kestrel's <c>WaitForDataBeforeAllocatingBuffer</c>).
/// While data streams in (a receive filled its whole buffer) the next receive goes straight into pipe memory; a
/// stream that stops exactly at a buffer boundary leaves that one block lent until the next byte or the close.
/// </para>
/// </summary>
internal sealed unsafe partial class IocpDispatcher : ProactorDispatcher
{
    /// <summary>Packets dequeued per call; a full batch means the next pass polls again without blocking.</summary>
    public const int MaxEntries = 128;

    /// <summary>Completion key of every socket associated with the port.</summary>
    private const nuint IoKey = 0;

    /// <summary>Completion key of the packets <see cref="Wake"/> posts.</summary>
    private const nuint WakeKey = 1;

    private readonly Stack<IocpSendBlock> _sendBlocks = new();
    private readonly Action<object?> _completeDeferred;
    private SafeCompletionPortHandle? _port;
    private nint _portHandle;
    private Kernel32.OVERLAPPED_ENTRY* _entries;

    // The batch being handled: packets from _batchNext to _batchCount were dequeued and not yet taken by a handler.
    // A throw out of the batch ends the loop; the failure path then ends those operations (SalvageAfterFailure), as
    // it does those whose packets it drains, instead of waiting for packets that are already out of the port.
    private uint _batchNext;
    private uint _batchCount;

    public IocpDispatcher(int id, ProactorBackendContext context) : base(id, context)
    {
        _completeDeferred = CompleteDeferred;
        _faults = IocpFaultPlan.Current?.CreateInjector(id);
    }

    public override string BackendName => "iocp";

    /// <summary>A listen socket stays bound to the port of the dispatcher that first accepted on it.</summary>
    public override bool CanTakeOverListener => false;

    /// <summary>Overlapped operations that succeeded at submission and so queued no packet (skip-on-success).</summary>
    public long SynchronousCompletions { get; private set; }

    /// <summary><c>CancelIoEx</c> calls that found their operation still in flight.</summary>
    public long CancelledOperations { get; private set; }

    /// <summary>Packets for owners or operations that no longer exist (should stay 0; counted for tests).</summary>
    public long StaleCompletions { get; private set; }

    /// <summary>The receive size hint: a whole block of the pipe's pool, up to <see cref="ProactorTransportOptions.ReceiveBufferSize"/>.</summary>
    private int ReceiveSizeHint => MemoryPool.MaxBufferSize > 0 ? Math.Min(Options.ReceiveBufferSize, MemoryPool.MaxBufferSize) : Options.ReceiveBufferSize;

    protected override void Initialize()
    {
        _port = SafeCompletionPortHandle.Create();
        _portHandle = _port.DangerousGetHandle();
        _entries = (Kernel32.OVERLAPPED_ENTRY*)NativeMemory.AllocZeroed((nuint)(MaxEntries * sizeof(Kernel32.OVERLAPPED_ENTRY)));
        Context.Metrics.Register(this);
    }

    // ---- the loop ----

    protected override void PollCompletions(bool wait, long waitNanoseconds)
    {
        if (_faults is not null)
        {
            BeginPassWithFaults();
            // Held completions must not wait behind a sleep for new ones.
            wait &= !_faults.HasHeld;
        }

        uint removed = 0;
        if (!Kernel32.GetQueuedCompletionStatusEx(_portHandle, _entries, MaxEntries, &removed, wait ? Kernel32.INFINITE : 0, alertable: false))
        {
            int error = Marshal.GetLastPInvokeError();
            if (error == Kernel32.WAIT_TIMEOUT)
            {
                if (_faults is not null)
                {
                    EndPassWithFaults();
                }

                return;
            }

            throw new IocpException($"GetQueuedCompletionStatusEx failed: Win32 error {error}", error);
        }

        _batchNext = 0;
        _batchCount = removed;
        while (_batchNext < _batchCount)
        {
            HandlePacket(in _entries[_batchNext]);
        }

        _batchCount = 0;
        if (removed != 0)
        {
            Context.Metrics.CompletionsPerWake.Record((int)removed);
        }

        if (_faults is not null)
        {
            EndPassWithFaults();
        }
    }

    /// <summary>Tests only: runs before each dequeued packet is taken, on the dispatcher thread, to fail a batch midway.</summary>
    internal static Action<IocpDispatcher>? TestPacketHook { get; set; }

    /// <summary>For tests: packets of the batch being handled that no handler has taken yet, this one included.</summary>
    internal uint PacketsLeftInBatch => _batchCount - _batchNext;

    /// <summary>For tests: completions the fault layer holds back.</summary>
    internal int HeldCompletionsForTests => _faults?.HeldCount ?? 0;

    private void HandlePacket(in Kernel32.OVERLAPPED_ENTRY entry)
    {
        TestPacketHook?.Invoke(this);
        if (entry.lpCompletionKey == WakeKey || entry.lpOverlapped is null)
        {
            _batchNext++;
            return;
        }

        // The OVERLAPPED is the first field of the operation's header; the user data follows it.
        var header = (IocpOperationHeader*)entry.lpOverlapped;
        IoResult result = PacketResult((uint)header->Overlapped.Internal, entry.dwNumberOfBytesTransferred);
        // Taken from here on: a throw below is left to the handler's books, not to the failure path's. Not before:
        // once HandleCompletion has marked the operation over, a handler may submit the slot's next operation, which
        // the packet's user data would then name. (A throw in the fault layer before that point keeps the block.)
        _batchNext++;
        Complete(header->UserData, result);
    }

    /// <summary>The result a packet carries: its status (left in <c>OVERLAPPED.Internal</c>) and bytes transferred.</summary>
    private static IoResult PacketResult(uint status, uint bytes) => status == NtStatus.STATUS_SUCCESS
        ? IoResult.Success((int)bytes)
        : IoResult.Failure(NtStatus.ToSocketError(status), unchecked((int)status), $"NTSTATUS 0x{status:X8}");

    /// <summary>Handles a result known at submission; runs from the local work queue.</summary>
    private void CompleteDeferred(object? state)
    {
        var operation = (IocpOperation)state!;
        operation.DeferredPending = false;
        Complete(operation.Owner.Token.ToUserData(operation.Kind), operation.DeferredResult);
    }

    /// <summary>Queues the completion of an operation whose result is already known (no packet will come).</summary>
    private void Defer(IocpOperation operation, IoResult result)
    {
        operation.DeferredResult = result;
        operation.DeferredPending = true;
        Schedule(_completeDeferred, operation);
    }

    private void Complete(ulong userData, IoResult result)
    {
        if (_faults is not null)
        {
            CompleteWithFaults(userData, result);
            return;
        }

        HandleCompletion(userData, result);
    }

    private void HandleCompletion(ulong userData, IoResult result)
    {
        OperationKind kind = OperationToken.KindOf(userData);
        IOperationOwner? owner = Table.OnCompleted(userData, final: true);
        IocpOperation? operation = owner is null ? null : FindOperation(owner, kind);
        if (operation is null || !operation.InFlight)
        {
            if (owner is not null)
            {
                // A packet for a slot with nothing in flight (Wine queues one even for some synchronous
                // failures): the count OnCompleted took belongs to no operation, so it is given back.
                Table.OnSubmitted(owner.Token);
            }

            StaleCompletions++;
            ProactorLog.StaleCompletion(Logger, userData);
            return;
        }

        operation.InFlight = false;
        switch (kind)
        {
            case OperationKind.Receive:
                CompleteReceive((ProactorConnection)owner!, operation, result);
                break;
            case OperationKind.Send:
                ReturnSendBlock((ProactorConnection)owner!);
                DispatchCompletion(owner!, kind, result, more: false, default, null);
                break;
            case OperationKind.Accept:
                CompleteAccept((ProactorConnectionListener)owner!, operation, result);
                break;
            case OperationKind.Close:
                var connection = (ProactorConnection)owner!;
                DispatchCompletion(connection, kind, result, more: false, default, null);
                // The last operation of the connection: nothing can write into its native blocks any more.
                if (connection.BackendState is IocpConnectionState state)
                {
                    connection.BackendState = null;
                    state.Free();
                }

                break;
            default:
                DispatchCompletion(owner!, kind, result, more: false, default, null);
                break;
        }
    }

    private static IocpOperation? FindOperation(IOperationOwner owner, OperationKind kind) => owner switch
    {
        ProactorConnection { BackendState: IocpConnectionState state } => state.Find(kind),
        ProactorConnectionListener { BackendState: IocpOperation accept } when kind == OperationKind.Accept => accept,
        _ => null,
    };

    private static IocpConnectionState StateOf(ProactorConnection connection)
    {
        if (connection.BackendState is not IocpConnectionState state)
        {
            state = new IocpConnectionState(connection);
            connection.BackendState = state;
        }

        return state;
    }

    private void Track(IocpOperation operation)
    {
        operation.InFlight = true;
        operation.CancelRequested = false;
        Table.OnSubmitted(operation.Owner.Token);
    }

    private static IoResult LastError(string call) => Failure(Marshal.GetLastPInvokeError(), call);

    /// <summary>A Win32/Winsock error as a result; 0 (a call that failed without saying why) still counts as a failure.</summary>
    private static IoResult Failure(int error, string call)
        => IoResult.Failure(error == 0 ? System.Net.Sockets.SocketError.SocketError : (System.Net.Sockets.SocketError)error, error, $"{call} error {error}");

    protected override void Wake()
    {
        SafeCompletionPortHandle? port = _port;
        if (port is null || port.IsClosed)
        {
            return;
        }

        bool added = false;
        try
        {
            port.DangerousAddRef(ref added);
            Kernel32.PostQueuedCompletionStatus(port.DangerousGetHandle(), 0, WakeKey, null);
        }
        catch (ObjectDisposedException)
        {
            // The dispatcher is gone; nothing to wake.
        }
        finally
        {
            if (added)
            {
                port.DangerousRelease();
            }
        }
    }

    /// <summary>Native operation blocks kept for good when the port closed, because the OS might still use them (for tests).</summary>
    internal int NativeBlocksKeptAtTeardown { get; private set; }

    protected override void Teardown()
    {
        Context.Metrics.Unregister(this);
        // Owners still here when the loop ended (a failure, or a stop whose deadline passed) may have operations in
        // flight: their native blocks are leaked rather than freed under the OS. Those whose operations are known to be
        // over (a failed port's drain read their packets) are freed.
        var owners = new List<IOperationOwner>();
        Table.CopyOwners(owners);
        foreach (IOperationOwner owner in owners)
        {
            switch (owner)
            {
                case ProactorConnection { BackendState: IocpConnectionState state } connection:
                    // Nothing may reach a freed block through the connection afterwards.
                    connection.BackendState = null;
                    NativeBlocksKeptAtTeardown += state.FreeOrKeep();
                    break;
                case ProactorConnectionListener { BackendState: IocpOperation accept } listener:
                    // The socket an AcceptEx in flight fills may already be connected (the OS finished the accept and
                    // its packet was never dequeued): nobody else will ever close it, and its client would wait on it
                    // for good. Closing it ends the AcceptEx too; the block it writes into is kept if the AcceptEx may still be pending.
                    accept.AcceptSocket?.Dispose();
                    accept.AcceptSocket = null;
                    listener.BackendState = null;
                    NativeBlocksKeptAtTeardown += accept.FreeOrKeep();
                    break;
            }
        }

        _port?.Dispose();
        if (_entries is not null)
        {
            NativeMemory.Free(_entries);
            _entries = null;
        }

        while (_sendBlocks.TryPop(out IocpSendBlock? block))
        {
            block.Dispose();
        }
    }

    public override bool TryGetEndPoint(SafeHandle socket, bool local, out EndPoint? endPoint)
    {
        const int MaxAddress = 128;
        byte* buffer = stackalloc byte[MaxAddress];
        int length = MaxAddress;
        nint handle = socket.DangerousGetHandle();
        int result = local ? Winsock.getsockname(handle, buffer, &length) : Winsock.getpeername(handle, buffer, &length);
        if (result != 0 || length < 2)
        {
            endPoint = null;
            return false;
        }

        endPoint = IocpSocketAddress.ToEndPoint(new ReadOnlySpan<byte>(buffer, Math.Min(length, MaxAddress)));
        return true;
    }

    /// <summary>
    /// Test hook: posts a packet carrying <paramref name="userData"/> as if an operation had completed, as a late
    /// packet for a connection that is gone would. The block stays allocated until the dispatcher is collected.
    /// </summary>
    internal void PostPacketForTests(ulong userData, IocpNativeBlock block)
    {
        var header = (IocpOperationHeader*)block.Pointer;
        header->UserData = userData;
        if (!Kernel32.PostQueuedCompletionStatus(_portHandle, 0, IoKey, &header->Overlapped))
        {
            throw new IocpException("PostQueuedCompletionStatus failed", Marshal.GetLastPInvokeError());
        }
    }
}
