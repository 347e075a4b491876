using KestrelProactor.Dispatching;
using KestrelProactor.Internal;

namespace KestrelProactor.Iocp;

/// <summary>
/// What the IOCP backend keeps per connection: one operation slot per kind (128 native bytes for the two
/// overlapped ones). Created at the first submission and freed when the close completes, when nothing of the
/// connection can be in flight any more.
/// </summary>
internal sealed class IocpConnectionState
{
    public IocpConnectionState(ProactorConnection connection)
    {
        Receive = new IocpOperation(connection, OperationKind.Receive);
        Send = new IocpOperation(connection, OperationKind.Send);
        Shutdown = new IocpOperation(connection, OperationKind.Shutdown, overlapped: false);
        Close = new IocpOperation(connection, OperationKind.Close, overlapped: false);
    }

    public IocpOperation Receive { get; }

    public IocpOperation Send { get; }

    public IocpOperation Shutdown { get; }

    public IocpOperation Close { get; }

    public IocpOperation? Find(OperationKind kind) => kind switch
    {
        OperationKind.Receive => Receive,
        OperationKind.Send => Send,
        OperationKind.Shutdown => Shutdown,
        OperationKind.Close => Close,
        _ => null,
    };

    public void Free()
    {
        Receive.Free();
        Send.Free();
    }

    /// <summary>At the end of the backend: each native block freed if the OS is done with it, else kept for good. Returns how many were kept.</summary>
    public int FreeOrKeep() => Receive.FreeOrKeep() + Send.FreeOrKeep();
}
