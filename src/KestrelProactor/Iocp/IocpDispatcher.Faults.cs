using System.Net;
using KestrelProactor.Dispatching;
using KestrelProactor.Internal;
using static KestrelProactor.Interop.Windows.Interop;

namespace KestrelProactor.Iocp;

/// <summary>
/// Fault injection between the dispatcher and the completion port (see <see cref="IocpFaultPlan"/>). With no plan,
/// <see cref="_faults"/> is null and none of these paths is taken. With one, real operations and completions are
/// changed into what Windows could have answered, keeping the books a real completion keeps:
/// <list type="bullet">
/// <item>submissions: a send offers fewer buffers or bytes (the OS takes less, the connection sends the rest); a
/// receive into pipe memory offers fewer bytes (a short receive); a WSARecv or WSASend fails at once with
/// WSAECONNRESET or WSAECONNABORTED, the call never made (nothing is queued, nothing written);</item>
/// <item>completions: a receive with data, a send, or a zero-byte receive is reported failed with the status that
/// dequeues as ERROR_NETNAME_DELETED (a reset) or ERROR_CONNECTION_ABORTED, a send also as ERROR_OPERATION_ABORTED;
/// a zero-byte receive (which consumed nothing) as ERROR_OPERATION_ABORTED, which the connection answers by
/// receiving again; an accepted socket is closed for real and its AcceptEx reported failed with
/// ERROR_NETNAME_DELETED (a client that reset in the backlog); a shutdown fails with WSAENOTCONN;</item>
/// <item>completions are held back for a few passes (one owner's stay in order), which reorders them across owners;</item>
/// <item>the dispatcher is killed: <c>GetQueuedCompletionStatusEx</c> fails with ERROR_INVALID_HANDLE or
/// ERROR_ABANDONED_WAIT_0 after a seeded number of completions, or in the first pass after a stop was asked for.</item>
/// </list>
/// A faulted completion is still the operation's one completion: the operation leaves flight through the same
/// handler, its native block is not touched before that (the OS is done with it: the packet was dequeued, or the
/// call was never made), and pipe memory a failed receive was given goes back through the connection. Faults that
/// lose or break a connection's bytes name its client port (<see cref="ProactorFaultPlan.TouchedPorts"/>); the
/// others must be invisible.
/// </summary>
internal sealed unsafe partial class IocpDispatcher
{
    private readonly IocpFaultInjector? _faults;
    private readonly List<IocpCompletion> _dueCompletions = new();

    /// <summary>The start of a pass with faults: a kill that is due goes in.</summary>
    private void BeginPassWithFaults()
    {
        IocpFaultInjector faults = _faults!;
        faults.BeginPass();
        switch (faults.KillMode)
        {
            case IocpKillMode.InvalidHandle when faults.Completions >= faults.Plan.KillAfterCompletions:
            case IocpKillMode.InvalidHandleDuringStop when StopRequested:
                Kill(faults, Kernel32.ERROR_INVALID_HANDLE, "ERROR_INVALID_HANDLE");
                break;
            case IocpKillMode.AbandonedWait when faults.Completions >= faults.Plan.KillAfterCompletions:
                Kill(faults, Kernel32.ERROR_ABANDONED_WAIT_0, "ERROR_ABANDONED_WAIT_0");
                break;
        }
    }

    /// <summary>
    /// The end of a pass with faults: held completions that are due are delivered. After the dequeue, not before it:
    /// their handlers queue work (a result known at submission, a pipe's callback), which the loop must see before it
    /// decides to block; delivered before a blocking dequeue, that work would wait for an unrelated packet.
    /// </summary>
    private void EndPassWithFaults() => DeliverHeld(all: false);

    private void Kill(IocpFaultInjector faults, int error, string name)
    {
        faults.Killed = true;
        // What was held back is delivered first: it had been dequeued, so the dispatcher's end must see it.
        DeliverHeld(all: true);
        faults.Plan.RecordKill(this, name);
        throw new IocpException($"GetQueuedCompletionStatusEx failed: Win32 error {error} (fault plan)", error);
    }

    /// <summary>Delivers held completions that are due (all once a stop was asked for: a stop never waits on a hold).</summary>
    private void DeliverHeld(bool all)
    {
        IocpFaultInjector faults = _faults!;
        faults.TakeDue(_dueCompletions, all || StopRequested);
        int next = 0;
        try
        {
            while (next < _dueCompletions.Count)
            {
                IocpCompletion completion = _dueCompletions[next++];
                DeliverWithFaults(completion.UserData, completion.Result);
            }
        }
        finally
        {
            // A throw cut the delivery short: what was not delivered is held again, where the failure path finds it.
            for (; next < _dueCompletions.Count; next++)
            {
                faults.Hold(_dueCompletions[next], _dueCompletions[next].UserData >> 16);
            }

            _dueCompletions.Clear();
        }
    }

    private void CompleteWithFaults(ulong userData, IoResult result)
    {
        IocpFaultInjector faults = _faults!;
        faults.Completions++;
        // One owner's completions keep their order: behind a held one, the next is held too.
        ulong key = userData >> 16;
        if (faults.IsHeld(key) || (!StopRequested && faults.Roll() && faults.Plan.Allows("hold")))
        {
            if (!faults.IsHeld(key))
            {
                faults.Plan.Count("held back");
            }

            faults.Hold(new IocpCompletion(userData, result), key);
            return;
        }

        DeliverWithFaults(userData, result);
    }

    /// <summary>A completion, perhaps changed the way Windows could have reported it.</summary>
    private void DeliverWithFaults(ulong userData, IoResult result)
    {
        IocpFaultInjector faults = _faults!;
        if (!faults.Roll())
        {
            HandleCompletion(userData, result);
            return;
        }

        OperationKind kind = OperationToken.KindOf(userData);
        IOperationOwner? owner = Table.Peek(userData);
        IocpOperation? operation = owner is null ? null : FindOperation(owner, kind);
        var connection = owner as ProactorConnection;
        if (operation is not { InFlight: true } || !result.IsSuccess)
        {
            // A stale packet, or one that failed anyway: as it came.
            HandleCompletion(userData, result);
            return;
        }

        switch (kind)
        {
            case OperationKind.Receive when connection is not null:
                if (operation.ZeroByte && faults.Next(0, 2) == 0 && faults.Plan.Allows("receive-aborted"))
                {
                    // A readiness wait ended by a cancellation nobody asked for: it consumed nothing, so the
                    // connection only receives again.
                    faults.Plan.Count("zero-byte receive ERROR_OPERATION_ABORTED");
                    result = PacketResult(NtStatus.STATUS_CANCELLED, 0);
                    break;
                }

                if ((result.Value == 0 && !operation.ZeroByte) || !faults.Plan.Allows("receive-error"))
                {
                    // FIN is left as it is.
                    break;
                }

                result = FailedPacket(faults, connection, operation.ZeroByte ? "zero-byte receive" : "receive", NtStatus.STATUS_CONNECTION_RESET, NtStatus.STATUS_CONNECTION_ABORTED);
                break;
            case OperationKind.Send when connection is not null && faults.Plan.Allows("send-error"):
                result = FailedPacket(faults, connection, "send", NtStatus.STATUS_CONNECTION_RESET, NtStatus.STATUS_CONNECTION_ABORTED, NtStatus.STATUS_CANCELLED);
                break;
            case OperationKind.Accept when operation.AcceptSocket is { } accepted && faults.Plan.Allows("accept"):
                // The client reset while it waited in the backlog: the accepted socket is closed for real (its
                // peer sees the connection end) and AcceptEx reports ERROR_NETNAME_DELETED.
                faults.Plan.Touch(AcceptedPeerPort(operation), "accept");
                accepted.Dispose();
                operation.AcceptSocket = null;
                faults.Plan.Count("accept ERROR_NETNAME_DELETED");
                result = PacketResult(NtStatus.STATUS_CONNECTION_RESET, 0);
                break;
            case OperationKind.Shutdown when connection is not null && faults.Plan.Allows("shutdown"):
                Fault(connection, "shutdown WSAENOTCONN");
                result = Failure(Winsock.WSAENOTCONN, "shutdown");
                break;
        }

        HandleCompletion(userData, result);
    }

    private IoResult FailedPacket(IocpFaultInjector faults, ProactorConnection connection, string what, params uint[] statuses)
    {
        uint status = faults.Pick(statuses);
        Fault(connection, $"{what} {Win32Name(status)}");
        return PacketResult(status, 0);
    }

    /// <summary>What the status of a packet dequeues as (GetQueuedCompletionStatus's last error).</summary>
    private static string Win32Name(uint status) => status switch
    {
        NtStatus.STATUS_CONNECTION_RESET => "ERROR_NETNAME_DELETED",
        NtStatus.STATUS_CONNECTION_ABORTED => "ERROR_CONNECTION_ABORTED",
        NtStatus.STATUS_CANCELLED => "ERROR_OPERATION_ABORTED",
        _ => $"NTSTATUS 0x{status:X8}",
    };

    /// <summary>
    /// Submission side, before a WSARecv or WSASend is made: true when the plan fails it at once with WSAECONNRESET
    /// or WSAECONNABORTED instead (the call is not made; its result is delivered like any synchronous failure).
    /// </summary>
    private bool FailsAtSubmission(ProactorConnection connection, string call, out IoResult failure)
    {
        IocpFaultInjector faults = _faults!;
        if (!faults.Roll() || faults.Next(0, 3) != 0 || !faults.Plan.Allows("sync-error"))
        {
            failure = default;
            return false;
        }

        int error = faults.Pick(Winsock.WSAECONNRESET, Winsock.WSAECONNABORTED);
        Fault(connection, $"{call} {(error == Winsock.WSAECONNRESET ? "WSAECONNRESET" : "WSAECONNABORTED")}");
        failure = Failure(error, call);
        return true;
    }

    /// <summary>A short send: fewer of the prepared buffers, or fewer bytes of the only one. Returns the buffer count to send.</summary>
    private int ShortenSend(IocpSendBlock block, int count)
    {
        IocpFaultInjector faults = _faults!;
        if (!faults.Roll() || !faults.Plan.Allows("short-send"))
        {
            return count;
        }

        if (count >= 2)
        {
            faults.Plan.Count("short send");
            return faults.Next(1, count);
        }

        if (count == 1 && block.Buffers[0].len >= 2)
        {
            block.Buffers[0].len = (uint)faults.Next(1, (int)Math.Min(block.Buffers[0].len, int.MaxValue));
            faults.Plan.Count("short send");
        }

        return count;
    }

    /// <summary>A short receive: a receive into pipe memory offers fewer bytes than it rented.</summary>
    private void ShortenReceive(IocpOperationHeader* header)
    {
        IocpFaultInjector faults = _faults!;
        if (header->Buffer.len >= 2 && faults.Roll() && faults.Plan.Allows("short-receive"))
        {
            header->Buffer.len = (uint)faults.Next(1, (int)header->Buffer.len);
            faults.Plan.Count("short receive");
        }
    }

    private void Fault(ProactorConnection connection, string fault) => _faults!.Plan.Fault(connection, fault);

    private static int PortOf(ProactorConnection connection) => ProactorFaultPlan.PortOf(connection);

    /// <summary>The client port of a completed AcceptEx, from the addresses it wrote.</summary>
    private static int AcceptedPeerPort(IocpOperation operation)
    {
        const uint addressLength = Winsock.AcceptExAddressLength;
        byte* local = null;
        byte* remote = null;
        int localLength = 0;
        int remoteLength = 0;
        Winsock.GetAcceptExSockaddrs(operation.Extra, 0, addressLength, addressLength, &local, &localLength, &remote, &remoteLength);
        if (remote is null || remoteLength < 2)
        {
            return 0;
        }

        return (IocpSocketAddress.ToEndPoint(new ReadOnlySpan<byte>(remote, remoteLength)) as IPEndPoint)?.Port ?? 0;
    }

    /// <summary>Each owner's operations and what is held back, for a run that is not quiet (read racily from another thread).</summary>
    internal string DescribeOperationsForTests()
    {
        var lines = new List<string> { $"#{Id}: held={_faults?.HeldCount ?? 0} stale={StaleCompletions}" };
        foreach (IOperationOwner owner in OwnersForTests())
        {
            string operations = owner switch
            {
                ProactorConnection { BackendState: IocpConnectionState state } =>
                    $"receive(inFlight={state.Receive.InFlight} zeroByte={state.Receive.ZeroByte} cancel={state.Receive.CancelRequested}) " +
                    $"send(inFlight={state.Send.InFlight}) shutdown={state.Shutdown.InFlight} close={state.Close.InFlight}",
                ProactorConnectionListener { BackendState: IocpOperation accept } => $"accept(inFlight={accept.InFlight})",
                _ => "no state",
            };
            string connection = owner is ProactorConnection c ? $" port={PortOf(c)} {c.DescribeForTests()}" : "";
            lines.Add($"  {owner.DisplayName} inFlight={Table.InFlightOf(owner)} {operations}{connection}");
        }

        return string.Join("\n", lines);
    }
}
