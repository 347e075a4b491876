using System.IO.Pipelines;
using System.Net.Sockets;
using System.Runtime.CompilerServices;
using KestrelProactor.Dispatching;
using KestrelProactor.Internal;
using KestrelProactor.IoUring;
using KestrelProactor.Tests.Contract;
using KestrelProactor.Tests.Infrastructure;

namespace KestrelProactor.Tests.Dispatching;

/// <summary>
/// A ring whose loop fails is given nothing more to do: what its last pass queued and the kernel never took stays
/// undone, even though the failed ring enters once more to cancel what is armed. A send queued in that pass must not
/// reach the peer after the dispatcher failed.
/// </summary>
[Collection(DispatcherHookCollection.Name)]
public sealed class FailedRingUntakenSubmissionTests
{
    [Fact]
    public async Task LoopFailsWithASendQueuedAndNotSubmitted_ThePeerNeverReceivesIt()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "io_uring");
        await using DispatcherEndDrainTests.Server server = await DispatcherEndDrainTests.Server.StartAsync(TransportKind.Proactor, o => o.DispatcherCount = 1);
        using var client = new Socket(SocketType.Stream, ProtocolType.Tcp);
        ProactorConnection connection = await server.ConnectAsync(client);
        var target = (IoUringDispatcher)connection.Dispatcher;
        Assert.SkipWhen(target.Ring.PollsSubmissions, "a polling ring takes what is published at any time");
        byte[] payload = RawClient.CreatePayload(4096, seed: 5);

        // Act: on the dispatcher thread, one pass queues a send (the output's reader continuation runs in the same
        // pass) and then finds a dropped completion before it enters: the loop fails with the send's SQE untaken.
        target.Schedule(state =>
        {
            var (c, ring, bytes) = ((ProactorConnection, IoUringRing, byte[]))state!;
            PipeWriter output = c.Transport.Output;
            bytes.CopyTo(output.GetSpan(bytes.Length));
            output.Advance(bytes.Length);
            _ = output.FlushAsync();
            ring.CountDroppedCompletionForTests();
        }, (connection, target.Ring, payload));
        await target.Ended.DefaultTimeout();

        // Assert: the connection ends (its descriptor is closed) and none of the queued bytes reached the client.
        int received = 0;
        var buffer = new byte[8192];
        try
        {
            while (true)
            {
                int n = await client.ReceiveAsync(buffer, SocketFlags.None).DefaultTimeout();
                if (n == 0)
                {
                    break;
                }

                received += n;
            }
        }
        catch (SocketException ex) when (ex.SocketErrorCode == SocketError.ConnectionReset)
        {
            // An abortive close: also an end.
        }

        Assert.True(target.HasEnded);
        Assert.Equal(0, received);
    }

    [Fact]
    public async Task LoopFailsWithAZeroCopySendQueuedAndNotSubmitted_ItsMemoryGoesBackToThePool()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "io_uring");
        var pool = new TrackingMemoryPool();
        IoUringDispatcher target;
        await using (DispatcherEndDrainTests.Server server = await DispatcherEndDrainTests.Server.StartAsync(TransportKind.Proactor, o =>
                     {
                         o.DispatcherCount = 1;
                         o.ZeroCopySendThreshold = 1024;
                         o.MemoryPoolFactory = () => pool;
                     }))
        {
            using var client = new Socket(SocketType.Stream, ProtocolType.Tcp);
            ProactorConnection connection = await server.ConnectAsync(client);
            target = (IoUringDispatcher)connection.Dispatcher;
            Assert.SkipWhen(target.Ring.PollsSubmissions, "a polling ring takes what is published at any time");
            byte[] payload = RawClient.CreatePayload(4096, seed: 6);
            var zeroCopyQueued = new StrongBox<bool>();

            // Act: as above, with the queued send a zero-copy one, whose block holds the output's pool blocks. The flush
            // queues the output's reader continuation, which queues the send; an item queued after it sees that send.
            target.Schedule(state =>
            {
                var (c, ring, bytes, queued) = ((ProactorConnection, IoUringRing, byte[], StrongBox<bool>))state!;
                PipeWriter output = c.Transport.Output;
                bytes.CopyTo(output.GetSpan(bytes.Length));
                output.Advance(bytes.Length);
                _ = output.FlushAsync();
                c.Dispatcher.Schedule(state2 =>
                {
                    var (c2, ring2, queued2) = ((ProactorConnection, IoUringRing, StrongBox<bool>))state2!;
                    queued2.Value = c2.SendState is IoUringSendBlock { IsZeroCopy: true };
                    ring2.CountDroppedCompletionForTests();
                }, (c, ring, queued));
            }, (connection, target.Ring, payload, zeroCopyQueued));
            await target.Ended.DefaultTimeout();
            Assert.True(zeroCopyQueued.Value, "the send queued in the failing pass was not zero-copy");

            // The application ends its side, as Kestrel does with a connection whose transport failed.
            await connection.Transport.Input.CompleteAsync();
            await connection.Transport.Output.CompleteAsync();
            await connection.DisposeAsync().AsTask().DefaultTimeout();
        }

        // Assert: the kernel never took the send, so nothing of the connection was kept for it: every block is back.
        Assert.True(target.HasFailed, "the dispatcher did not fail");
        await Eventually.TrueAsync(() => pool.Outstanding == 0, $"every pool block back ({pool.Outstanding} out)");
        Assert.Empty(pool.CollectErrors());
    }
}
