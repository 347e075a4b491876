namespace KestrelProactor.Dispatching;

/// <summary>The asynchronous operations a dispatcher hands to the kernel. Encoded in each operation's user data.</summary>
internal enum OperationKind : byte
{
    Nop = 0,
    Wake = 1,
    Accept = 2,
    Receive = 3,
    Send = 4,
    Shutdown = 5,
    Close = 6,
    Cancel = 7,

    /// <summary>
    /// Not a kernel operation and never submitted: a work item or pipe continuation run on the dispatcher for
    /// an owner (its start, an abort). Names the step that threw when such an item faults.
    /// </summary>
    Work = 8,
}
