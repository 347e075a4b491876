using System.Net.Sockets;
using KestrelProactor.Dispatching;
using KestrelProactor.Internal;
using KestrelProactor.Iocp;
using KestrelProactor.Tests.Contract;
using KestrelProactor.Tests.Infrastructure;
using Microsoft.AspNetCore.Connections;

namespace KestrelProactor.Windows.Tests.Iocp;

/// <summary>What a failed completion port leaves behind (found by the fault-injection runs' kills).</summary>
[Collection(DispatcherHookCollection.Name)]
public sealed class IocpFailureTests
{
    [Fact]
    public async Task PortFails_WithAnAcceptFinishedButNotDequeued_ClosesTheAcceptedSocket()
    {
        Assert.SkipUnless(OperatingSystem.IsWindows(), "The IOCP backend exists only on Windows.");
        await using ListenerHarness harness = await ListenerHarness.BindAsync(TransportKind.Proactor);
        IocpDispatcher[] dispatchers = IocpTestServer.Dispatchers(harness);
        IocpOperation? accept = null;
        IocpDispatcher? target = null;
        await IocpTestServer.WaitUntilAsync(() =>
        {
            foreach (IocpDispatcher d in dispatchers)
            {
                if (d.OwnersForTests().OfType<ProactorConnectionListener>().FirstOrDefault() is { BackendState: IocpOperation { InFlight: true } operation })
                {
                    (target, accept) = (d, operation);
                    return true;
                }
            }

            return false;
        }, "the listener's AcceptEx is in flight");

        using var hookEntered = new ManualResetEventSlim();
        bool finished = false;
        ProactorDispatcher.TestLoopHook = d =>
        {
            if (!ReferenceEquals(d, target))
            {
                return;
            }

            // On the dispatcher thread, between passes: the client connects now, the OS finishes the AcceptEx and
            // queues its packet, and the port fails before the packet is dequeued.
            hookEntered.Set();
            finished = SpinWait.SpinUntil(() => accept!.FinishedInKernelForTests, TestTimeouts.Default);
            throw new InvalidOperationException("injected completion port failure");
        };
        using var client = new Socket(SocketType.Stream, ProtocolType.Tcp);
        try
        {
            // A work item wakes the dispatcher for a pass. One may run in the pass that is already past its hook (the
            // dispatcher was busy when the hook was set), so items are sent until a pass enters the hook.
            DateTime deadline = DateTime.UtcNow + TestTimeouts.Default;
            do
            {
                target!.Schedule(static _ => { }, null);
            }
            while (!hookEntered.Wait(TimeSpan.FromMilliseconds(100)) && DateTime.UtcNow < deadline);

            Assert.True(hookEntered.IsSet, "The dispatcher did not reach its next pass.");
            await client.ConnectAsync(harness.EndPoint).WaitAsync(TestTimeouts.Default);
            await IocpTestServer.WaitUntilAsync(() => target.HasEnded, "the dispatcher ended");
        }
        finally
        {
            ProactorDispatcher.TestLoopHook = null;
        }

        Assert.True(finished, "The AcceptEx did not finish while its dispatcher waited.");
        Assert.True(target.HasFailed);

        // Assert: the socket AcceptEx connected is closed with its dispatcher; the client sees its connection end
        // (FIN or reset) instead of talking to a socket nobody owns.
        var buffer = new byte[16];
        int received;
        try
        {
            received = await client.ReceiveAsync(buffer, SocketFlags.None).WaitAsync(TimeSpan.FromSeconds(10));
        }
        catch (SocketException)
        {
            received = 0;
        }

        Assert.Equal(0, received);
    }

    [Fact]
    public async Task PortFails_WithASendInFlight_CancelsIt_ThePipeMemoryGoesBackToThePool()
    {
        Assert.SkipUnless(OperatingSystem.IsWindows(), "The IOCP backend exists only on Windows.");
        var pool = new TrackingMemoryPool();
        ProactorDispatcher? target = null;
        ProactorConnection? served = null;
        bool sendInFlight = false;
        await using (ListenerHarness harness = await ListenerHarness.BindAsync(TransportKind.Proactor, memoryPool: pool))
        {
            (Socket client, ConnectionContext accepted) = await harness.ConnectAndAcceptAsync();
            var connection = Assert.IsType<ProactorConnection>(accepted);
            served = connection;
            target = connection.Dispatcher;
            ProactorDispatcher.TestLoopHook = d =>
            {
                // On the dispatcher thread: fail the port once a send is in flight. The client never reads, so one
                // stays in flight once the socket's buffers are full.
                if (ReferenceEquals(d, target) && connection.BackendState is IocpConnectionState { Send.InFlight: true, Send.DeferredPending: false })
                {
                    sendInFlight = true;
                    throw new InvalidOperationException("injected completion port failure");
                }
            };
            try
            {
                // 16 MiB the client never reads: the application's flushes wait on back-pressure meanwhile.
                Task writing = Task.Run(async () =>
                {
                    byte[] chunk = new byte[64 * 1024];
                    for (int i = 0; i < 256; i++)
                    {
                        await accepted.Transport.Output.WriteAsync(chunk);
                    }
                });
                DateTime deadline = DateTime.UtcNow + TestTimeouts.Default;
                while (!target.HasEnded && DateTime.UtcNow < deadline)
                {
                    target.Schedule(static _ => { }, null);
                    await Task.Delay(20);
                }

                Assert.True(target.HasEnded, "The dispatcher did not fail with a send in flight.");
                await target.Ended.WaitAsync(TestTimeouts.Default);
                await Task.WhenAny(writing, Task.Delay(TestTimeouts.Default));
            }
            finally
            {
                ProactorDispatcher.TestLoopHook = null;
            }

            await accepted.DisposeAsync().AsTask().DefaultTimeout();
            client.Dispose();
        }

        Assert.True(sendInFlight);
        Assert.True(target!.HasFailed);
        // Assert: what the drain proved over is given back, not kept for good: the connection's and the listener's
        // native OVERLAPPED blocks, and the drained send's pins and WSABUF array.
        Assert.Equal(0, ((IocpDispatcher)target).NativeBlocksKeptAtTeardown);
        Assert.Null(served!.SendState);
        // Assert: the cancelled send's packet was read before the port closed, so the connection was released with
        // nothing in flight and its output blocks went back instead of being kept for the OS for good.
        await IocpTestServer.WaitUntilAsync(() => pool.Outstanding == 0, $"every pool block came back ({pool.Outstanding} out)");
    }

    [Fact]
    public async Task PortFails_MidwayThroughABatch_TheOperationsWhosePacketsItHeldEnd_NoBlockIsKept()
    {
        Assert.SkipUnless(OperatingSystem.IsWindows(), "The IOCP backend exists only on Windows.");
        await using ListenerHarness harness = await ListenerHarness.BindAsync(TransportKind.Proactor, configure: o => o.DispatcherCount = 1);
        IocpDispatcher target = Assert.Single(IocpTestServer.Dispatchers(harness));
        (Socket clientA, ConnectionContext a) = await harness.ConnectAndAcceptAsync();
        (Socket clientB, ConnectionContext b) = await harness.ConnectAndAcceptAsync();
        IocpOperation receiveA = await ReceiveOfAsync(a), receiveB = await ReceiveOfAsync(b);
        await IocpTestServer.WaitUntilAsync(() => receiveA.InFlight && receiveB.InFlight, "both connections wait for data");

        using var hookEntered = new ManualResetEventSlim();
        int armed = 1, thrown = 0;
        bool bothFinished = false;
        // On the dispatcher thread, between passes: both receives finish in the OS now, so the next dequeue takes
        // both packets in one batch, and the batch fails before any of them is handled.
        ProactorDispatcher.TestLoopHook = d =>
        {
            if (ReferenceEquals(d, target) && Interlocked.Exchange(ref armed, 0) == 1)
            {
                hookEntered.Set();
                bothFinished = SpinWait.SpinUntil(() => receiveA.FinishedInKernelForTests && receiveB.FinishedInKernelForTests, TestTimeouts.Default);
            }
        };
        IocpDispatcher.TestPacketHook = d =>
        {
            if (ReferenceEquals(d, target) && d.PacketsLeftInBatch >= 2 && Interlocked.Exchange(ref thrown, 1) == 0)
            {
                throw new InvalidOperationException("injected failure midway through a batch of packets");
            }
        };
        try
        {
            DateTime deadline = DateTime.UtcNow + TestTimeouts.Default;
            do
            {
                target.Schedule(static _ => { }, null);
            }
            while (!hookEntered.Wait(TimeSpan.FromMilliseconds(100)) && DateTime.UtcNow < deadline);

            Assert.True(hookEntered.IsSet, "The dispatcher did not reach its next pass.");
            await clientA.SendAsync(new byte[] { 1 }, SocketFlags.None).DefaultTimeout();
            await clientB.SendAsync(new byte[] { 2 }, SocketFlags.None).DefaultTimeout();
            await target.Ended.WaitAsync(TestTimeouts.Default);
        }
        finally
        {
            ProactorDispatcher.TestLoopHook = null;
            IocpDispatcher.TestPacketHook = null;
        }

        Assert.True(bothFinished, "The receives did not finish while their dispatcher waited.");
        Assert.Equal(1, thrown);
        Assert.True(target.HasFailed);
        // Assert: the packets the failed batch had taken out of the port ended their operations, so their native
        // blocks were freed; without that, the drain waited for packets that would never come and kept them for good.
        Assert.Equal(0, target.NativeBlocksKeptAtTeardown);
    }

    [Fact]
    public async Task PortFails_WithCompletionsHeldBack_TheyEndTheirOperations_NoBlockIsKept()
    {
        Assert.SkipUnless(OperatingSystem.IsWindows(), "The IOCP backend exists only on Windows.");
        // Every completion is held back for a few passes (the fault layer's reordering), nothing else is injected.
        IocpFaultPlan.Current = new IocpFaultPlan(seed: 1, rate: 1.0) { Only = new HashSet<string> { "hold" } };
        ListenerHarness harness;
        try
        {
            harness = await ListenerHarness.BindAsync(TransportKind.Proactor, configure: o => o.DispatcherCount = 1);
        }
        finally
        {
            IocpFaultPlan.Current = null;
        }

        await using (harness)
        {
            IocpDispatcher target = Assert.Single(IocpTestServer.Dispatchers(harness));
            (Socket client, ConnectionContext accepted) = await harness.ConnectAndAcceptAsync();
            IocpOperation receive = await ReceiveOfAsync(accepted);
            await IocpTestServer.WaitUntilAsync(() => receive.InFlight, "the connection waits for data");

            int held = 0;
            ProactorDispatcher.TestLoopHook = d =>
            {
                // On the dispatcher thread: fail once the receive's packet was dequeued and is held back.
                if (ReferenceEquals(d, target) && receive.FinishedInKernelForTests && target.HeldCompletionsForTests > 0 && receive.InFlight)
                {
                    held = target.HeldCompletionsForTests;
                    throw new InvalidOperationException("injected completion port failure while completions are held back");
                }
            };
            try
            {
                await client.SendAsync(new byte[] { 1 }, SocketFlags.None).DefaultTimeout();
                await target.Ended.WaitAsync(TestTimeouts.Default);
            }
            finally
            {
                ProactorDispatcher.TestLoopHook = null;
            }

            Assert.True(held > 0, "The dispatcher did not fail while a completion was held back.");
            Assert.True(target.HasFailed);
            // Assert: the held packets ended their operations (no drain would see them again), so no block was kept.
            Assert.Equal(0, target.NativeBlocksKeptAtTeardown);
        }
    }

    /// <summary>The connection's receive slot, once its dispatcher has started it (the state is made on first use).</summary>
    private static async Task<IocpOperation> ReceiveOfAsync(ConnectionContext connection)
    {
        var proactor = Assert.IsType<ProactorConnection>(connection);
        await IocpTestServer.WaitUntilAsync(() => proactor.BackendState is IocpConnectionState, "the connection's first receive");
        return ((IocpConnectionState)proactor.BackendState!).Receive;
    }
}
