using System.Net.Sockets;
using KestrelProactor.Dispatching;
using KestrelProactor.Internal;
using KestrelProactor.IoUring;
using KestrelProactor.Tests.Infrastructure;

namespace KestrelProactor.Tests.Dispatching;

/// <summary>
/// The cancel-everything request a healthy ring sends at its end is told apart from every other completion: no
/// operation token, no zero-copy send and no abandoned SQE carries its user data.
/// </summary>
[Collection(DispatcherHookCollection.Name)]
public sealed class QuiesceCancelTests
{
    [Fact]
    public void QuiesceCancelUserData_IsNoTokenNoZeroCopySendAndNoAbandonedSqe()
    {
        ulong userData = IoUringDispatcher.QuiesceCancelUserData;

        // A token's byte above its kind is always 0, and its kind is one of the enum's.
        Assert.NotEqual(0UL, (userData >> 8) & 0xFF);
        Assert.False(Enum.IsDefined(OperationToken.KindOf(userData)));
        Assert.Equal(0UL, userData >> 63);
        Assert.NotEqual(IoUringDispatcher.AbandonedUserData, userData);
    }

    [Fact]
    public async Task StopDeadlinePassesWithOperationsInFlightAndAnAbandonedSqe_EachCompletionIsRecognised()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "io_uring");
        var server = await DispatcherEndDrainTests.Server.StartAsync(TransportKind.Proactor);
        using var client = new Socket(SocketType.Stream, ProtocolType.Tcp);
        ProactorConnection connection = await server.ConnectAsync(client);
        var target = (IoUringDispatcher)connection.Dispatcher;
        await server.UnbindAsync();
        int stage = 0;
        try
        {
            // The pass that fills the connection's close runs past the stop's deadline, so the loop ends with the
            // connection's operations in flight (the ring's end cancels them all). In that pass an SQE is taken and
            // abandoned (its owner's token cannot be read): it goes out only when the ring ends, and completes there.
            ProactorDispatcher.TestLoopHook = d =>
            {
                if (ReferenceEquals(d, target) && d.StopRequested && connection.Socket.IsClosed && Interlocked.CompareExchange(ref stage, 1, 0) == 0)
                {
                    try
                    {
                        target.SubmitNop(new UnnamedOwner());
                    }
                    catch (InvalidOperationException)
                    {
                        Volatile.Write(ref stage, 2);
                    }

                    Thread.Sleep(ProactorDispatcher.StopTimeout + TimeSpan.FromMilliseconds(200));
                }
            };
            await server.Factory.DisposeAsync().AsTask().WaitAsync(ProactorDispatcher.StopTimeout + ProactorDispatcher.QuiesceTimeout + TestTimeouts.Default);
        }
        finally
        {
            ProactorDispatcher.TestLoopHook = null;
        }

        // Assert: the abandoned SQE's completion was counted as such, and the cancel's own answer was recognised (it
        // cancelled the wake-up read at least) rather than taken from the abandoned one.
        Assert.Equal(2, stage);
        Assert.False(target.HasFailed);
        Assert.Equal(1, target.AbandonedSubmissions);
        Assert.True(target.QuiesceCancelled >= 1, $"the cancel's answer was not recognised (cancelled {target.QuiesceCancelled})");
        Assert.Equal(0, target.StaleCompletions);
        await connection.DisposeAsync().AsTask().DefaultTimeout();
    }

    /// <summary>An owner whose token cannot be read: the SQE taken for it stays the abandoned NOP.</summary>
    private sealed class UnnamedOwner : IOperationOwner
    {
        public OperationToken Token
        {
            get => throw new InvalidOperationException("injected failure while naming the SQE");
            set { }
        }

        public string DisplayName => "unnamed";

        public void OnHandlerFault(OperationKind kind, bool operationEnded, Exception exception)
        {
        }

        public void OnDispatcherFailed(Exception error, bool operationsMayBeLive)
        {
        }
    }
}
