using System.Buffers;
using System.Net.Sockets;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using KestrelProactor.Dispatching;
using KestrelProactor.Internal;
using static KestrelProactor.Interop.Windows.Interop;

namespace KestrelProactor.Iocp;

/// <summary>Submitting operations, and what happens between a packet and the shared handler.</summary>
internal sealed unsafe partial class IocpDispatcher
{
    private static nint HandleOf(SafeHandle handle) => handle.DangerousGetHandle();

    /// <summary>
    /// A test hook: when it returns true for a dispatcher, setting skip-on-success fails there, as the call can
    /// (a layered provider that is not an IFS one, for one).
    /// </summary>
    internal static Func<IocpDispatcher, bool>? TestFailCompletionModesHook { get; set; }

    /// <summary>
    /// Asks the port to queue no packet for this handle's operations that succeed at once. Where it fails, such an
    /// operation still queues a packet: the submission must then treat an immediate success as pending and let the
    /// packet complete it, or the operation would be handled twice and its reused OVERLAPPED would complete the
    /// next one.
    /// </summary>
    private bool TrySkipPortOnSuccess(nint handle)
    {
        if (TestFailCompletionModesHook?.Invoke(this) == true)
        {
            return false;
        }

        return Kernel32.SetFileCompletionNotificationModes(handle, Kernel32.FILE_SKIP_COMPLETION_PORT_ON_SUCCESS | Kernel32.FILE_SKIP_SET_EVENT_ON_HANDLE);
    }

    private static bool SkipsPortOnSuccess(ProactorConnection connection) => connection.Socket is IocpSocketHandle { SkipsPortOnSuccess: true };

    // ---- accept ----

    public override void SubmitAccept(ProactorConnectionListener listener)
    {
        if (listener.BackendState is not IocpOperation operation)
        {
            operation = new IocpOperation(listener, OperationKind.Accept, extraNativeBytes: 2 * Winsock.AcceptExAddressLength);
            listener.BackendState = operation;
        }

        Track(operation);
        operation.Prepare();
        nint listenHandle = HandleOf(listener.ListenHandle);
        if (!operation.Associated)
        {
            // The listen socket comes from the shared listener (a .NET Socket that has done nothing asynchronous,
            // so it is bound to no other port).
            if (Kernel32.CreateIoCompletionPort(listenHandle, _portHandle, IoKey, 0) == 0)
            {
                Defer(operation, LastError("CreateIoCompletionPort"));
                return;
            }

            operation.SkipsPortOnSuccess = TrySkipPortOnSuccess(listenHandle);
            operation.Associated = true;
        }

        AddressFamily family = listener.EndPoint.AddressFamily;
        int protocol = family is AddressFamily.InterNetwork or AddressFamily.InterNetworkV6 ? Winsock.IPPROTO_TCP : 0;
        nint socket = Winsock.WSASocketW((int)family, Winsock.SOCK_STREAM, protocol, null, 0, Winsock.WSA_FLAG_OVERLAPPED | Winsock.WSA_FLAG_NO_HANDLE_INHERIT);
        if (socket == Winsock.INVALID_SOCKET)
        {
            Defer(operation, LastError("WSASocketW"));
            return;
        }

        operation.AcceptSocket = new IocpSocketHandle(socket);
        IocpOperationHeader* header = operation.Header;
        const uint addressLength = Winsock.AcceptExAddressLength;
        // AcceptEx is called through a function pointer: its error is read straight from the thread's last error.
        Marshal.SetLastSystemError(0);
        int accepted = Winsock.AcceptEx(listenHandle, socket, operation.Extra, 0, addressLength, addressLength, &header->Bytes, &header->Overlapped);
        int error = Marshal.GetLastSystemError();
        if (accepted != 0)
        {
            if (operation.SkipsPortOnSuccess)
            {
                // A connection was waiting: no packet.
                SynchronousCompletions++;
                Defer(operation, IoResult.Success(0));
            }

            // Otherwise its packet completes it.
            return;
        }

        if (error != Kernel32.ERROR_IO_PENDING)
        {
            Defer(operation, Failure(error, "AcceptEx"));
        }
    }

    private void CompleteAccept(ProactorConnectionListener listener, IocpOperation operation, IoResult result)
    {
        IocpSocketHandle? socket = operation.AcceptSocket;
        operation.AcceptSocket = null;
        if (result.IsSuccess && socket is not null)
        {
            // Gives the accepted socket the listener's properties; getpeername and shutdown need it.
            nint listenHandle = HandleOf(listener.ListenHandle);
            if (Winsock.setsockopt(HandleOf(socket), Winsock.SOL_SOCKET, Winsock.SO_UPDATE_ACCEPT_CONTEXT, &listenHandle, sizeof(nint)) != 0)
            {
                result = LastError("setsockopt(SO_UPDATE_ACCEPT_CONTEXT)");
                socket.Dispose();
                socket = null;
            }
        }
        else
        {
            socket?.Dispose();
            socket = null;
        }

        DispatchCompletion(listener, OperationKind.Accept, result, more: false, default, socket);
        if (!operation.InFlight && listener.ListenHandle.IsClosed)
        {
            // The listener stopped accepting and closed its socket: the slot is done for good.
            listener.BackendState = null;
            operation.Free();
        }
    }

    public override void ConfigureAcceptedSocket(SafeHandle socket, bool noDelay)
    {
        // The handle is held while its value is used: a closed one throws instead of having its value, which
        // another handle of the process may have taken, configured.
        bool added = false;
        try
        {
            socket.DangerousAddRef(ref added);
            ConfigureHeldSocket(socket, noDelay);
        }
        finally
        {
            if (added)
            {
                socket.DangerousRelease();
            }
        }
    }

    private void ConfigureHeldSocket(SafeHandle socket, bool noDelay)
    {
        // Runs on the accept dispatcher's thread for a connection of this dispatcher: only thread-safe calls here.
        nint handle = HandleOf(socket);
        if (Kernel32.CreateIoCompletionPort(handle, _portHandle, IoKey, 0) == 0)
        {
            int error = Marshal.GetLastPInvokeError();
            throw new IocpException($"CreateIoCompletionPort failed for an accepted socket: Win32 error {error}", error);
        }

        if (socket is IocpSocketHandle iocpSocket)
        {
            iocpSocket.SkipsPortOnSuccess = TrySkipPortOnSuccess(handle);
        }

        if (noDelay)
        {
            int one = 1;
            Winsock.setsockopt(handle, Winsock.IPPROTO_TCP, Winsock.TCP_NODELAY, &one, sizeof(int));
        }
    }

    // ---- receive ----

    public override void SubmitReceive(ProactorConnection connection)
    {
        IocpOperation operation = StateOf(connection).Receive;
        Track(operation);
        // While data streams in (the last receive filled its buffer), more is almost surely waiting: read it at
        // once instead of paying a zero-byte receive per buffer. Otherwise wait for data holding no memory.
        IssueReceive(connection, operation, zeroByte: !operation.LastReceiveFilled);
    }

    /// <summary>
    /// Issues the receive of an operation already counted in flight: zero bytes to wait for readiness, or into pipe
    /// memory. A zero-byte receive that succeeds at once (data is waiting) goes straight on to the real one.
    /// </summary>
    private void IssueReceive(ProactorConnection connection, IocpOperation operation, bool zeroByte)
    {
        while (true)
        {
            operation.Prepare();
            operation.ZeroByte = zeroByte;
            IocpOperationHeader* header = operation.Header;
            if (zeroByte)
            {
                header->Buffer.len = 0;
                header->Buffer.buf = null;
            }
            else
            {
                Memory<byte> memory;
                try
                {
                    memory = connection.RentReceiveMemory(ReceiveSizeHint);
                }
                catch (InvalidOperationException ex)
                {
                    // The input writer was completed meanwhile (the application stopped reading): end the receive.
                    Defer(operation, IoResult.Failure(SocketError.OperationAborted, 0, "input ended: " + ex.Message));
                    return;
                }

                // Pinned by RentReceiveMemory until the connection handles the completion.
                header->Buffer.len = (uint)memory.Length;
                header->Buffer.buf = (byte*)Unsafe.AsPointer(ref MemoryMarshal.GetReference(memory.Span));
                if (_faults is not null)
                {
                    ShortenReceive(header);
                }
            }

            if (_faults is not null && FailsAtSubmission(connection, "WSARecv", out IoResult failure))
            {
                Defer(operation, failure);
                return;
            }

            int result = Winsock.WSARecv(HandleOf(connection.Socket), &header->Buffer, 1, &header->Bytes, &header->Flags, &header->Overlapped, 0);
            if (result == 0)
            {
                if (!SkipsPortOnSuccess(connection))
                {
                    // Its packet completes it (a zero-byte one then issues the real receive, in CompleteReceive).
                    return;
                }

                SynchronousCompletions++;
                if (zeroByte)
                {
                    if (operation.CancelRequested || connection.IsClosing)
                    {
                        Defer(operation, Cancelled);
                        return;
                    }

                    zeroByte = false;
                    continue;
                }

                Defer(operation, IoResult.Success((int)header->Bytes));
                return;
            }

            int error = Marshal.GetLastPInvokeError();
            if (error != Winsock.WSA_IO_PENDING)
            {
                Defer(operation, Failure(error, "WSARecv"));
            }

            return;
        }
    }

    private static IoResult Cancelled => IoResult.Failure(SocketError.OperationAborted, 0, "cancelled");

    private void CompleteReceive(ProactorConnection connection, IocpOperation operation, IoResult result)
    {
        if (operation.ZeroByte)
        {
            operation.ZeroByte = false;
            if (result.IsSuccess && !operation.CancelRequested && !connection.IsClosing)
            {
                // Data (or FIN) is waiting: read it into pipe memory as the same logical receive.
                operation.InFlight = true;
                Table.OnSubmitted(connection.Token);
                IssueReceive(connection, operation, zeroByte: false);
                return;
            }

            if (result.IsSuccess)
            {
                result = Cancelled;
            }
        }

        operation.LastReceiveFilled = result.IsSuccess && result.Value > 0 && result.Value == (int)operation.Header->Buffer.len;

        // Any other failure status ends the connection in the shared code (Wine even completes a receive pending
        // at close with a warning status, 0x8000000A); a cancellation is OperationAborted. The bytes are already in
        // the pipe's memory, still pinned: the handler gets a view of them (only the test receive hook reads it).
        ReadOnlySpan<byte> received = result.IsSuccess && result.Value > 0
            ? new ReadOnlySpan<byte>(operation.Header->Buffer.buf, result.Value)
            : default;
        DispatchCompletion(connection, OperationKind.Receive, result, more: false, received, null);
    }

    // ---- send ----

    protected override void SubmitSend(ProactorConnection connection, in ReadOnlySequence<byte> buffer)
    {
        IocpOperation operation = StateOf(connection).Send;
        if (!_sendBlocks.TryPop(out IocpSendBlock? block))
        {
            block = new IocpSendBlock();
        }

        int count = block.Prepare(buffer);
        connection.SendState = block;
        Track(operation);
        operation.Prepare();
        if (_faults is not null)
        {
            count = ShortenSend(block, count);
            if (FailsAtSubmission(connection, "WSASend", out IoResult failure))
            {
                Defer(operation, failure);
                return;
            }
        }

        IocpOperationHeader* header = operation.Header;
        int result = Winsock.WSASend(HandleOf(connection.Socket), block.Buffers, (uint)count, &header->Bytes, 0, &header->Overlapped, 0);
        if (result == 0)
        {
            if (!SkipsPortOnSuccess(connection))
            {
                // Its packet completes it.
                return;
            }

            SynchronousCompletions++;
            Defer(operation, IoResult.Success((int)header->Bytes));
            return;
        }

        int error = Marshal.GetLastPInvokeError();
        if (error != Winsock.WSA_IO_PENDING)
        {
            Defer(operation, Failure(error, "WSASend"));
        }
    }

    private void ReturnSendBlock(ProactorConnection connection)
    {
        if (connection.SendState is IocpSendBlock block)
        {
            connection.SendState = null;
            block.Release();
            _sendBlocks.Push(block);
        }
    }

    // ---- shutdown, cancel, close ----

    public override void SubmitShutdownWrite(ProactorConnection connection)
    {
        IocpOperation operation = StateOf(connection).Shutdown;
        Track(operation);
        IoResult result = Winsock.shutdown(HandleOf(connection.Socket), Winsock.SD_SEND) == 0 ? IoResult.Success(0) : LastError("shutdown");
        Defer(operation, result);
    }

    public override void SubmitCancel(IOperationOwner owner, OperationKind kind)
    {
        IocpOperation? operation = FindOperation(owner, kind);
        if (operation is null || !operation.InFlight)
        {
            return;
        }

        operation.CancelRequested = true;
        SafeHandle? handle = owner switch
        {
            ProactorConnection connection when kind is OperationKind.Receive or OperationKind.Send => connection.Socket,
            ProactorConnectionListener listener when kind == OperationKind.Accept => listener.ListenHandle,
            _ => null,
        };
        // ERROR_NOT_FOUND: the operation has completed and its packet (or deferred result) is on its way.
        if (handle is not null && Kernel32.CancelIoEx(HandleOf(handle), &operation.Header->Overlapped))
        {
            CancelledOperations++;
        }
    }

    public override void SubmitClose(ProactorConnection connection)
    {
        IocpOperation operation = StateOf(connection).Close;
        Track(operation);
        // Nothing of the connection is in flight (the shared code closes last): closesocket sends FIN, or RST
        // after SetAbortiveClose.
        connection.Socket.Dispose();
        Defer(operation, IoResult.Success(0));
    }

    public override void SetAbortiveClose(ProactorConnection connection)
    {
        Winsock.linger linger = new() { l_onoff = 1, l_linger = 0 };
        Winsock.setsockopt(HandleOf(connection.Socket), Winsock.SOL_SOCKET, Winsock.SO_LINGER, &linger, sizeof(Winsock.linger));
    }
}
