using System.Net.Sockets;
using KestrelProactor.Dispatching;
using KestrelProactor.Tests.Infrastructure;

namespace KestrelProactor.Tests.Dispatching;

/// <summary>
/// A ring whose loop fails while the kernel holds completions back (the CQ was full): accepts among them installed
/// descriptors nobody will read, which the end of the failed ring must still close.
/// </summary>
[Collection(DispatcherHookCollection.Name)]
public sealed class FailureBacklogTests
{
    private const int Clients = 16;

    [Fact]
    public async Task LoopFailsWithAcceptsHeldBackInAFullCompletionQueue_EveryAcceptedDescriptorIsClosed()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "io_uring");
        var clients = new List<Socket>();
        DispatcherEndDrainTests.Server server = await DispatcherEndDrainTests.Server.StartAsync(TransportKind.Proactor, o =>
        {
            o.DispatcherCount = 1;
            o.SubmissionQueueSize = 4;
            o.CompletionQueueSize = 4;
        });
        bool disposed = false;
        try
        {
            int stage = 0;
            ProactorDispatcher target = Assert.Single(server.Factory.Backend!.Dispatchers);
            ProactorDispatcher.TestLoopHook = d =>
            {
                if (!ReferenceEquals(d, target))
                {
                    return;
                }

                if (Volatile.Read(ref stage) == 1)
                {
                    // On the dispatcher thread, between two enters: the connections complete their handshakes now and
                    // the accept's completions are posted at the next enter, more than the 4-entry CQ holds.
                    for (int i = 0; i < Clients; i++)
                    {
                        var client = new Socket(SocketType.Stream, ProtocolType.Tcp);
                        lock (clients)
                        {
                            clients.Add(client);
                        }

                        client.Connect(server.Listener.EndPoint);
                    }

                    Volatile.Write(ref stage, 2);
                }
                else if (Volatile.Read(ref stage) == 2)
                {
                    // The pass after that enter: its handlers read what the CQ held, the rest is still the kernel's.
                    Volatile.Write(ref stage, 3);
                    throw new InvalidOperationException("injected ring failure");
                }
            };
            Volatile.Write(ref stage, 1);
            // Wakes the sleeping loop: its accept completes and the next pass begins with the hook.
            var waker = new Socket(SocketType.Stream, ProtocolType.Tcp);
            lock (clients)
            {
                clients.Add(waker);
            }

            await waker.ConnectAsync(server.Listener.EndPoint).DefaultTimeout();
            await DispatcherEndDrainTests.WaitUntilAsync(() => Volatile.Read(ref stage) == 3 && target.HasEnded);
            await target.Ended.DefaultTimeout();
        }
        finally
        {
            ProactorDispatcher.TestLoopHook = null;
        }

        try
        {
            Assert.True(clients.Count == Clients + 1, $"{clients.Count} clients connected");
            await server.DisposeAsync();
            disposed = true;

            // Assert: every accepted descriptor was closed (connections not yet accepted are reset with the listener),
            // so each client hears the end. A descriptor left open keeps its connection established for good.
            long deadline = Environment.TickCount64 + (long)TestTimeouts.Default.TotalMilliseconds;
            List<Socket> open = clients;
            while ((open = open.Where(c => !c.Poll(0, SelectMode.SelectRead)).ToList()).Count != 0 && Environment.TickCount64 < deadline)
            {
                await Task.Delay(20, TestContext.Current.CancellationToken);
            }

            Assert.True(open.Count == 0, $"{open.Count} of {clients.Count} connections still open on the server after its ring failed");
        }
        finally
        {
            if (!disposed)
            {
                await server.DisposeAsync();
            }

            foreach (Socket client in clients)
            {
                client.Dispose();
            }
        }
    }
}
