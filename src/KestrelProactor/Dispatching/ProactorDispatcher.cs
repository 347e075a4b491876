namespace KestrelProactor.Dispatching;

internal abstract class ProactorDispatcher
{
    public long InFlightOperations { get; protected set; }
    public long ReceiveBuffersLent { get; protected set; }
    public long ConnectionCount { get; protected set; }
}
