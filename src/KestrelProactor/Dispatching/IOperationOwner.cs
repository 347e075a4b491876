namespace KestrelProactor.Dispatching;

/// <summary>
/// Something that has operations in flight on a dispatcher: a listener (accepts) or a connection (receive,
/// send, shutdown, close). The dispatcher routes each completion to its owner through the operation table.
/// </summary>
internal interface IOperationOwner
{
    /// <summary>Set by <see cref="OperationTable.Register"/>; identifies the owner in user data.</summary>
    OperationToken Token { get; set; }

    /// <summary>A name for logs (the connection id or the endpoint).</summary>
    string DisplayName { get; }

    /// <summary>
    /// Called on the dispatcher thread when a completion handler of this owner threw. The owner must end itself
    /// (a connection aborts); the dispatcher has logged the exception and goes on. <paramref name="operationEnded"/>:
    /// the completion was the operation's last (false for a multishot operation that stays armed, and for faults
    /// outside a completion).
    /// </summary>
    void OnHandlerFault(OperationKind kind, bool operationEnded, Exception exception);

    /// <summary>
    /// Called once this owner's dispatcher has ended under it: it failed on an unrecoverable error, or a stop ran
    /// out of time with this owner still open, or a work item for it came after the end. Its kernel queue is closed,
    /// so no operation of this owner will complete: the owner releases what it holds without one, and ends with
    /// <paramref name="error"/>. <paramref name="operationsMayBeLive"/>: operations of this owner had not completed
    /// and the kernel may still use their memory; the owner must keep that memory (see
    /// <see cref="ProactorDispatcher.KeepForKernel"/>) rather than give it back. May run on any thread; must be
    /// idempotent (the first call decides).
    /// </summary>
    void OnDispatcherFailed(Exception error, bool operationsMayBeLive);
}
