using System.Collections.Concurrent;
using System.Diagnostics.Tracing;
using System.IO.Pipelines;
using System.Net.Sockets;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using KestrelProactor.Dispatching;
using KestrelProactor.Internal;
using KestrelProactor.Tests.Contract;
using KestrelProactor.Tests.Infrastructure;

namespace KestrelProactor.Tests.Dispatching;

/// <summary>
/// Output memory larger than a pool block (an application's <c>GetMemory</c> beyond the pool's block size) is kept
/// for the kernel like pool blocks when a send into it may still be live at the dispatcher's end: it must not go
/// back to the shared array pool, where anyone may rent and overwrite it while the kernel still reads it.
/// </summary>
[Collection(PollingCollection.Name)]
public sealed class OversizedOutputQuarantineTests
{
    private const int WriteSize = 64 * 1024;
    private const int MaxWriteBufferSize = 1024 * 1024;

    [Fact]
    public async Task LoopFailsWithASendFromOversizedMemoryInFlight_ThatMemoryIsNotReturnedToTheSharedArrayPool()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "io_uring");
        var pool = new TrackingMemoryPool();
        await using var server = await DispatcherEndDrainTests.Server.StartAsync(TransportKind.ProactorBasicTier, o =>
        {
            o.SubmissionQueuePolling = true;
            o.MemoryPoolFactory = () => pool;
            o.MaxWriteBufferSize = MaxWriteBufferSize;
        });
        using var client = new Socket(SocketType.Stream, ProtocolType.Tcp);
        client.ReceiveBufferSize = 4096;
        ProactorConnection connection = await server.ConnectAsync(client);
        ProactorDispatcher target = connection.Dispatcher;
        Assert.SkipUnless(((IoUring.IoUringDispatcher)target).Ring.PollsSubmissions, "the kernel refused SQPOLL");
        // A failed ring that can still be entered cancels its sends before it closes, and a cancelled send is over:
        // this is the ring that can no longer be entered, whose sends stay maybe live.
        ((IoUring.IoUringDispatcher)target).TestSkipCancelAfterFailure = true;
        using var returns = new ArrayPoolReturns();

        // Writes larger than a pool block (the pipe takes them from the shared array pool), more than the kernel can
        // hold for a peer that reads nothing: at most the server socket's largest send buffer (the autotuning limit)
        // and the client's locked receive buffer, each with a segment's overshoot. What the kernel cannot take stays
        // in pipe memory for good, with a send from it in flight, whatever the scheduling. (Stopping at a flush that
        // stays pending a while is not enough: on a busy machine the flush only waits for the dispatcher, its send
        // then completes, and every array goes back before the failure.)
        long kernelCanHold = SendBufferLimit() + (2 * 1024 * 1024);
        int writes = (int)((kernelCanHold + MaxWriteBufferSize) / WriteSize) + 1;
        long idle = target.InFlightOperations;
        PipeWriter output = connection.Transport.Output;
        var written = new HashSet<int>();
        for (int i = 0; i < writes; i++)
        {
            Memory<byte> memory = output.GetMemory(WriteSize);
            Assert.True(MemoryMarshal.TryGetArray<byte>(memory, out ArraySegment<byte> segment));
            Assert.False(pool.Owns(memory), "the pipe took a block larger than the pool's from the pool");
            written.Add(RuntimeHelpers.GetHashCode(segment.Array!));
            memory.Span.Slice(0, WriteSize).Fill(1);
            output.Advance(WriteSize);
        }

        Task<FlushResult> flush = output.FlushAsync().AsTask();

        // The send from that memory is in flight (beyond the receive, and the listener's accept when it shares the
        // ring); it can never complete, so it stays.
        await DispatcherEndDrainTests.WaitUntilAsync(() => target.InFlightOperations > idle);
        Assert.False(flush.IsCompleted, $"the socket took {writes} writes of {WriteSize} bytes without the peer reading");
        try
        {
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

        // Act: the failed dispatcher released the connection with its send maybe live; the application then ends
        // its output, and the pipe gives back every segment it holds.
        (int position, HashSet<int> outstanding) = returns.Snapshot();
        outstanding.IntersectWith(written);
        Assert.True(outstanding.Count != 0, "no written memory was out of the shared pool at the failure");
        await Task.WhenAny(flush, Task.Delay(TestTimeouts.Default));
        Assert.True(flush.IsCompleted, "the application's flush never completed");
        await output.CompleteAsync();
        await connection.DisposeAsync().AsTask().DefaultTimeout();

        // Assert: none of the memory out of the shared pool at the failure went back to it.
        int returnedAfter = returns.ReturnedSince(position).Count(outstanding.Contains);
        Assert.True(returnedAfter == 0, $"{returnedAfter} of {outstanding.Count} array(s) a live send may read went back to the shared array pool");
    }

    /// <summary>The largest send buffer TCP grows a socket's to (the last of <c>net.ipv4.tcp_wmem</c>).</summary>
    private static long SendBufferLimit()
        => long.Parse(File.ReadAllText("/proc/sys/net/ipv4/tcp_wmem").Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries)[2]);

    /// <summary>Rents from and returns to <c>ArrayPool&lt;byte&gt;.Shared</c>, by array identity hash, from its event source.</summary>
    private sealed class ArrayPoolReturns : EventListener
    {
        private readonly Lock _gate = new();
        private readonly Dictionary<int, int> _out = [];
        private readonly List<int> _returns = [];

        /// <summary>How many returns were seen so far, and the arrays rented more often than returned.</summary>
        public (int Position, HashSet<int> Outstanding) Snapshot()
        {
            lock (_gate)
            {
                return (_returns.Count, [.. _out.Where(pair => pair.Value > 0).Select(pair => pair.Key)]);
            }
        }

        public int[] ReturnedSince(int position)
        {
            lock (_gate)
            {
                return _returns.Skip(position).ToArray();
            }
        }

        protected override void OnEventSourceCreated(EventSource eventSource)
        {
            if (eventSource.Name == "System.Buffers.ArrayPoolEventSource")
            {
                EnableEvents(eventSource, EventLevel.Verbose);
            }
        }

        protected override void OnEventWritten(EventWrittenEventArgs eventData)
        {
            bool rented = eventData.EventName == "BufferRented";
            if ((!rented && eventData.EventName != "BufferReturned") || eventData.PayloadNames?.IndexOf("bufferId") is not int index || index < 0)
            {
                return;
            }

            int id = (int)eventData.Payload![index]!;
            lock (_gate)
            {
                _out[id] = _out.GetValueOrDefault(id) + (rented ? 1 : -1);
                if (!rented)
                {
                    _returns.Add(id);
                }
            }
        }
    }
}
