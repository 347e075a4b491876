using System.IO.Pipelines;
using System.Net.Sockets;
using KestrelProactor.Dispatching;
using KestrelProactor.Internal;
using KestrelProactor.Tests.Infrastructure;

namespace KestrelProactor.Tests.Dispatching;

/// <summary>
/// A ring without DEFER_TASKRUN (one with a polling thread) fails with a receive into pipe memory and a send in
/// flight: their memory is kept for the kernel, and the application's pending read and flush still end.
/// </summary>
[Collection(PollingCollection.Name)]
public sealed class KeptMemoryTests
{
    [Fact]
    public async Task LoopFailsWithReceiveAndSendInFlight_MemoryIsKeptAndTheApplicationsReadAndFlushComplete()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "io_uring");
        await using var server = await DispatcherEndDrainTests.Server.StartAsync(TransportKind.ProactorBasicTier, o => o.SubmissionQueuePolling = true);
        using var client = new Socket(SocketType.Stream, ProtocolType.Tcp);
        client.ReceiveBufferSize = 4096;
        ProactorConnection connection = await server.ConnectAsync(client);
        ProactorDispatcher target = connection.Dispatcher;
        Assert.SkipUnless(((IoUring.IoUringDispatcher)target).Ring.PollsSubmissions, "the kernel refused SQPOLL");
        ValueTask<ReadResult> read = connection.Transport.Input.ReadAsync();
        // The client reads nothing: once the socket's send buffer is full, a send stays in the kernel.
        Task<FlushResult> flush = await DispatcherEndDrainTests.WriteUntilSendStaysInKernelAsync(connection.Transport.Output);
        await DispatcherEndDrainTests.WaitUntilAsync(() => target.InFlightOperations >= 2);
        int keptBefore = ProactorDispatcher.KeptForKernelCount;
        try
        {
            // As a ring that cannot be entered any more: a failed ring that can be cancels what is in flight and reads
            // the answers (FailedRingCancelTests), and would then rightly keep nothing.
            ((IoUring.IoUringDispatcher)target).TestSkipCancelAfterFailure = true;
            ProactorDispatcher.TestLoopHook = d =>
            {
                if (ReferenceEquals(d, target))
                {
                    throw new InvalidOperationException("injected ring failure");
                }
            };
            target.Schedule(static _ => { }, null);
            await target.Ended.DefaultTimeout();
        }
        finally
        {
            ProactorDispatcher.TestLoopHook = null;
        }

        Assert.True(ProactorDispatcher.KeptForKernelCount > keptBefore);
        // The read ends with the dispatcher's error, the flush with the output's end.
        Task<ReadResult> readTask = read.AsTask();
        await Task.WhenAny(readTask, Task.Delay(TestTimeouts.Default));
        Assert.True(readTask.IsCompleted, "the application's read never completed");
        Assert.IsType<Microsoft.AspNetCore.Connections.ConnectionAbortedException>(readTask.Exception?.InnerException);
        await Task.WhenAny(flush, Task.Delay(TestTimeouts.Default));
        Assert.True(flush.IsCompleted, "the application's flush never completed");
        if (flush.IsFaulted)
        {
            Assert.IsType<Microsoft.AspNetCore.Connections.ConnectionAbortedException>(flush.Exception!.InnerException);
        }
        else
        {
            Assert.True((await flush).IsCompleted);
        }
        await connection.DisposeAsync().AsTask().DefaultTimeout();
    }
}
