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
}
