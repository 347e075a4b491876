namespace KestrelProactor.IoUring;

/// <summary>
/// What the io_uring backend keeps per connection beside the connection's own state machine (in its
/// <see cref="Internal.ProactorConnection.BackendState"/>). Dispatcher thread only.
/// </summary>
internal sealed class IoUringConnectionState
{
    /// <summary>
    /// Basic tier: the receive in flight is still a readiness poll, which holds no memory. Once data is there the
    /// dispatcher turns it into a receive into pipe memory, and the connection sees one receive either way.
    /// </summary>
    public bool Polling { get; set; }

    /// <summary>
    /// Basic tier: the connection cancelled its receive while it was a poll. A poll that completed before the
    /// cancel reached it must end the receive as cancelled instead of starting a receive the cancel would miss.
    /// </summary>
    public bool PollCancelled { get; set; }

    /// <summary>
    /// Basic tier: the last receive filled all the memory it had, so more is probably waiting: the next one goes
    /// straight to a receive. After a short receive the socket is drained and the next one polls first.
    /// </summary>
    public bool ReceiveFilled { get; set; }

    /// <summary>Basic tier: the length of the receive in flight.</summary>
    public int ReceiveLength { get; set; }

    /// <summary>
    /// Ring tier: this connection's place in the queue of receives waiting for a buffer (smaller is served first).
    /// </summary>
    public long ReceiveTurn { get; set; }

    /// <summary>
    /// Ring tier: the receive in flight is a retry of one that waited for a buffer, and no data has come since; if it
    /// finds the ring empty again it keeps <see cref="ReceiveTurn"/>.
    /// </summary>
    public bool RetriedForBuffer { get; set; }

    /// <summary>The socket refused a zero-copy send (EOPNOTSUPP): its sends copy from now on.</summary>
    public bool ZeroCopyRefused { get; set; }
}
