using System.Runtime.InteropServices;
using KestrelProactor.Dispatching;
using KestrelProactor.Internal;
using static KestrelProactor.Interop.Windows.Interop;

namespace KestrelProactor.Iocp;

/// <summary>
/// What a failed dispatcher asks of its completion port before it closes it. Closing the port does not end the
/// operations on its sockets: until each completes, the OS may still write into its <c>OVERLAPPED</c> and into the pipe
/// memory a receive or a send points at, so an owner released with operations in flight keeps that memory out of the
/// pool for good. So the failed dispatcher, unless its port cannot be read any more, cancels what is in flight and
/// reads the packets that follow (no handler runs), for at most <see cref="FailureDrainTimeout"/>: what completed is
/// no longer in flight, and its owner's memory goes back to the pool when it is released.
/// </summary>
internal sealed unsafe partial class IocpDispatcher
{
    /// <summary>How long a failed dispatcher waits for the packets of what it cancelled before it closes its port anyway.</summary>
    private static readonly TimeSpan FailureDrainTimeout = TimeSpan.FromMilliseconds(500);

    protected override void SalvageAfterFailure()
    {
        if (_port is null || _entries is null)
        {
            return;
        }

        // Packets already out of the port that no handler took (the batch a throw cut short, completions the fault
        // layer held back): their operations are over, and no drain would see their packets again.
        EndDequeuedAfterFailure();

        int pending = 0;
        var owners = new List<IOperationOwner>();
        Table.CopyOwners(owners);
        foreach (IOperationOwner owner in owners)
        {
            switch (owner)
            {
                case ProactorConnection { BackendState: IocpConnectionState state } connection:
                    pending += EndAfterFailure(state.Receive, connection.Socket);
                    pending += EndAfterFailure(state.Send, connection.Socket);
                    EndAfterFailure(state.Shutdown, null);
                    EndAfterFailure(state.Close, null);
                    break;
                case ProactorConnectionListener { BackendState: IocpOperation accept } listener:
                    pending += EndAfterFailure(accept, listener.ListenHandle);
                    break;
            }
        }

        if (pending != 0)
        {
            DrainAfterFailure(pending);
        }
    }

    private void EndDequeuedAfterFailure()
    {
        for (; _batchNext < _batchCount; _batchNext++)
        {
            ref Kernel32.OVERLAPPED_ENTRY entry = ref _entries[_batchNext];
            if (entry.lpCompletionKey != WakeKey && entry.lpOverlapped is not null)
            {
                EndPacketAfterFailure(((IocpOperationHeader*)entry.lpOverlapped)->UserData);
            }
        }

        _batchCount = 0;
        if (_faults is { HasHeld: true } faults)
        {
            var held = new List<IocpCompletion>();
            faults.TakeDue(held, all: true);
            foreach (IocpCompletion completion in held)
            {
                EndPacketAfterFailure(completion.UserData);
            }
        }
    }

    /// <summary>A packet read after the failure, or dequeued before it and never handled: its operation is over for the OS.</summary>
    private bool EndPacketAfterFailure(ulong userData)
    {
        IOperationOwner? owner = Table.Peek(userData);
        if (owner is not null && FindOperation(owner, OperationToken.KindOf(userData)) is { InFlight: true } operation)
        {
            EndedAfterFailure(operation);
            return true;
        }

        return false;
    }

    /// <summary>Ends an operation in flight: at once when its result was already known, else by a cancel. Returns 1 when a packet is to come.</summary>
    private int EndAfterFailure(IocpOperation operation, SafeHandle? handle)
    {
        if (!operation.InFlight)
        {
            return 0;
        }

        if (operation.DeferredPending)
        {
            // Known at submission and waiting in the work queue, which will not run: the OS is done with it.
            operation.DeferredPending = false;
            EndedAfterFailure(operation);
            return 0;
        }

        if (handle is not null && !handle.IsClosed)
        {
            // ERROR_NOT_FOUND: it has completed and its packet is in the port.
            Kernel32.CancelIoEx(HandleOf(handle), &operation.Header->Overlapped);
        }

        return 1;
    }

    private void EndedAfterFailure(IocpOperation operation)
    {
        operation.InFlight = false;
        Table.OnCompleted(operation.Owner.Token.ToUserData(operation.Kind), final: true);
        if (operation.Kind == OperationKind.Send && operation.Owner is ProactorConnection connection)
        {
            // Over for the OS: its pins and WSABUF array go back (the teardown frees the pooled blocks).
            ReturnSendBlock(connection);
        }
        else if (operation.Kind == OperationKind.Accept)
        {
            // A socket the accept may have connected: nobody will take it now.
            operation.AcceptSocket?.Dispose();
            operation.AcceptSocket = null;
        }
    }

    /// <summary>Reads packets until every cancelled operation has completed, the time is up, or the port fails.</summary>
    private void DrainAfterFailure(int pending)
    {
        long deadline = Environment.TickCount64 + (long)FailureDrainTimeout.TotalMilliseconds;
        while (pending > 0)
        {
            long left = deadline - Environment.TickCount64;
            if (left <= 0)
            {
                return;
            }

            uint removed = 0;
            if (!Kernel32.GetQueuedCompletionStatusEx(_portHandle, _entries, MaxEntries, &removed, (uint)Math.Min(left, 50), alertable: false))
            {
                if (Marshal.GetLastPInvokeError() == Kernel32.WAIT_TIMEOUT)
                {
                    continue;
                }

                // The port cannot be read: what is still in flight keeps its memory.
                return;
            }

            for (uint i = 0; i < removed; i++)
            {
                ref Kernel32.OVERLAPPED_ENTRY entry = ref _entries[i];
                if (entry.lpCompletionKey == WakeKey || entry.lpOverlapped is null)
                {
                    continue;
                }

                if (EndPacketAfterFailure(((IocpOperationHeader*)entry.lpOverlapped)->UserData))
                {
                    pending--;
                }
            }
        }
    }
}
