using System.Net;
using System.Net.Sockets;
using KestrelProactor.IoUring;
using static KestrelProactor.Interop.Linux.Interop;
using static KestrelProactor.Interop.Linux.Interop.IoUring;

namespace KestrelProactor.Tests.Interop;

/// <summary>
/// The buffer ring's own count of the buffers the kernel can pick from, checked against the kernel: the dispatcher
/// retries a receive that found the ring empty only once this count says a buffer is there, and gives back the
/// buffer of a completion nobody claims without counting it as lent.
/// </summary>
public sealed unsafe class BufferRingAccountingTests
{
    private const ushort GroupId = 3;

    [Fact]
    public void Available_AtZero_TheKernelFindsTheRingEmpty_AfterAReturn_ItFindsTheBuffer()
    {
        using IoUringRing ring = IoUringRing.Create(8, 64, [], new List<string>());
        using IoUringBufferRing buffers = IoUringBufferRing.TryCreate(ring, GroupId, 2, 4096, out int errno)!;
        Assert.Equal(0, errno);
        using SocketPair first = SocketPair.Create();
        using SocketPair second = SocketPair.Create();
        using SocketPair third = SocketPair.Create();
        first.Send("one");
        second.Send("two");
        third.Send("three");
        Assert.Equal(2, buffers.Available);

        // Act: two receives take both buffers (their completions counted as lends), a third finds none.
        ushort a = ReceiveOne(ring, buffers, first, out _);
        ushort b = ReceiveOne(ring, buffers, second, out _);
        Assert.Equal(0, buffers.Available);
        Assert.Equal(2, buffers.Lent);
        Assert.Equal(-Errno.ENOBUFS, Receive(ring, third).res);

        // A buffer comes back: by the count the ring has one again, and the kernel agrees.
        buffers.Return(a);
        buffers.Publish();
        Assert.Equal(1, buffers.Available);
        ushort c = ReceiveOne(ring, buffers, third, out string text);
        Assert.Equal("three", text);
        Assert.Equal(a, c);
        buffers.Return(b);
        buffers.Return(c);
        Assert.Equal(0, buffers.Lent);
    }

    [Fact]
    public void Recycle_ABufferNobodyWasLent_GoesBackWithoutMovingTheLentCount()
    {
        using IoUringRing ring = IoUringRing.Create(8, 64, [], new List<string>());
        using IoUringBufferRing buffers = IoUringBufferRing.TryCreate(ring, GroupId, 2, 4096, out _)!;
        using SocketPair pair = SocketPair.Create();

        // Act: the kernel fills a buffer for a completion the dispatcher gives no owner (its owner is gone).
        pair.Send("stale");
        io_uring_cqe cqe = Receive(ring, pair);
        Assert.NotEqual(0u, cqe.flags & IORING_CQE_F_BUFFER);
        buffers.Recycle((ushort)(cqe.flags >> IORING_CQE_BUFFER_SHIFT));
        buffers.Publish();

        // Assert: nothing lent, both buffers the kernel's again, and it uses them.
        Assert.Equal(0, buffers.Lent);
        Assert.Equal(2, buffers.Available);
        pair.Send("fresh");
        ushort id = ReceiveOne(ring, buffers, pair, out string text);
        Assert.Equal("fresh", text);
        buffers.Return(id);
        Assert.Equal(0, buffers.Lent);
    }

    /// <summary>A receive that must get a buffer; its completion is counted as the dispatcher counts a lend.</summary>
    private static ushort ReceiveOne(IoUringRing ring, IoUringBufferRing buffers, SocketPair pair, out string text)
    {
        io_uring_cqe cqe = Receive(ring, pair);
        Assert.True(cqe.res > 0, $"the receive failed: {cqe.res}");
        Assert.NotEqual(0u, cqe.flags & IORING_CQE_F_BUFFER);
        ushort id = (ushort)(cqe.flags >> IORING_CQE_BUFFER_SHIFT);
        text = System.Text.Encoding.ASCII.GetString(buffers.GetData(id, cqe.res));
        return id;
    }

    /// <summary>One single-shot receive from the ring's buffer group, submitted and waited for.</summary>
    private static io_uring_cqe Receive(IoUringRing ring, SocketPair pair)
    {
        io_uring_sqe* sqe = ring.TryGetSqe();
        sqe->opcode = IORING_OP_RECV;
        sqe->fd = (int)pair.Server.Handle;
        sqe->flags = IOSQE_BUFFER_SELECT;
        sqe->buf_index = GroupId;
        sqe->user_data = 9;
        Assert.Equal(1, ring.SubmitAndWait(1));
        Assert.True(ring.TryPeekCompletion(0, out io_uring_cqe cqe));
        ring.AdvanceCompletions(1);
        return cqe;
    }

    private sealed class SocketPair : IDisposable
    {
        private SocketPair(Socket client, Socket server)
        {
            Client = client;
            Server = server;
        }

        public Socket Client { get; }

        public Socket Server { get; }

        public static SocketPair Create()
        {
            using var listener = new Socket(SocketType.Stream, ProtocolType.Tcp);
            listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
            listener.Listen();
            var client = new Socket(SocketType.Stream, ProtocolType.Tcp);
            client.Connect(listener.LocalEndPoint!);
            return new SocketPair(client, listener.Accept());
        }

        /// <summary>Sends, and waits until the bytes are readable on the server side.</summary>
        public void Send(string text)
        {
            Client.Send(System.Text.Encoding.ASCII.GetBytes(text));
            Assert.True(Server.Poll(TimeSpan.FromSeconds(15), SelectMode.SelectRead));
        }

        public void Dispose()
        {
            Client.Dispose();
            Server.Dispose();
        }
    }
}
