using System.Runtime.InteropServices;
using KestrelProactor.IoUring;
using static KestrelProactor.Interop.Linux.Interop;
using static KestrelProactor.Interop.Linux.Interop.IoUring;

namespace KestrelProactor.Tests.Interop;

/// <summary>The kernel ABI as this project declares it, and the ring's basic life, checked against the running kernel.</summary>
public unsafe class IoUringInteropTests
{
    [Fact]
    public void StructSizes_MatchKernelAbi()
    {
        Assert.Equal(64, sizeof(io_uring_sqe));
        Assert.Equal(16, sizeof(io_uring_cqe));
        Assert.Equal(120, sizeof(io_uring_params));
        Assert.Equal(40, sizeof(io_sqring_offsets));
        Assert.Equal(40, sizeof(io_cqring_offsets));
        Assert.Equal(16, sizeof(io_uring_probe));
        Assert.Equal(8, sizeof(io_uring_probe_op));
        Assert.Equal(40, sizeof(io_uring_buf_reg));
        Assert.Equal(16, sizeof(io_uring_buf));
        Assert.Equal(16, sizeof(io_uring_rsrc_update));
        Assert.Equal(56, sizeof(Sys.msghdr));
        Assert.Equal(16, sizeof(Sys.iovec));
    }

    [Fact]
    public void SqeFieldOffsets_MatchKernelAbi()
    {
        Assert.Equal(0, (int)Marshal.OffsetOf<io_uring_sqe>(nameof(io_uring_sqe.opcode)));
        Assert.Equal(1, (int)Marshal.OffsetOf<io_uring_sqe>(nameof(io_uring_sqe.flags)));
        Assert.Equal(2, (int)Marshal.OffsetOf<io_uring_sqe>(nameof(io_uring_sqe.ioprio)));
        Assert.Equal(4, (int)Marshal.OffsetOf<io_uring_sqe>(nameof(io_uring_sqe.fd)));
        Assert.Equal(8, (int)Marshal.OffsetOf<io_uring_sqe>(nameof(io_uring_sqe.off)));
        Assert.Equal(16, (int)Marshal.OffsetOf<io_uring_sqe>(nameof(io_uring_sqe.addr)));
        Assert.Equal(24, (int)Marshal.OffsetOf<io_uring_sqe>(nameof(io_uring_sqe.len)));
        Assert.Equal(28, (int)Marshal.OffsetOf<io_uring_sqe>(nameof(io_uring_sqe.op_flags)));
        Assert.Equal(32, (int)Marshal.OffsetOf<io_uring_sqe>(nameof(io_uring_sqe.user_data)));
        Assert.Equal(40, (int)Marshal.OffsetOf<io_uring_sqe>(nameof(io_uring_sqe.buf_index)));
        Assert.Equal(44, (int)Marshal.OffsetOf<io_uring_sqe>(nameof(io_uring_sqe.file_index)));
        Assert.Equal(48, (int)Marshal.OffsetOf<io_uring_sqe>(nameof(io_uring_sqe.addr3)));
        Assert.Equal(40, (int)Marshal.OffsetOf<io_uring_params>(nameof(io_uring_params.sq_off)));
        Assert.Equal(80, (int)Marshal.OffsetOf<io_uring_params>(nameof(io_uring_params.cq_off)));
        Assert.Equal(8, (int)Marshal.OffsetOf<io_uring_cqe>(nameof(io_uring_cqe.res)));
        Assert.Equal(12, (int)Marshal.OffsetOf<io_uring_cqe>(nameof(io_uring_cqe.flags)));
    }

    [Fact]
    public void Create_ReportsSizesAndFeatures_AndDisposeClosesRingFd()
    {
        var refused = new List<string>();
        IoUringRing ring = IoUringRing.Create(8, 64, [IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN], refused);
        SafeFileDescriptorHandle fd = ring.RingFd;
        try
        {
            Assert.Equal(8u, ring.SqEntries);
            Assert.Equal(64u, ring.CqEntries);
            Assert.NotEqual(0u, ring.Features & IORING_FEAT_FAST_POLL);
            Assert.True(File.Exists($"/proc/self/fd/{fd.Fd}"));
        }
        finally
        {
            ring.Dispose();
        }

        Assert.True(fd.IsClosed);
    }

    [Fact]
    public void Nop_RoundTrip_ReturnsUserDataAndZero()
    {
        using IoUringRing ring = IoUringRing.Create(4, 16, [], new List<string>());
        for (ulong i = 1; i <= 3; i++)
        {
            io_uring_sqe* sqe = ring.TryGetSqe();
            Assert.True(sqe is not null);
            sqe->opcode = IORING_OP_NOP;
            sqe->user_data = 1000 + i;
        }

        int submitted = ring.SubmitAndWait(3);

        Assert.Equal(3, submitted);
        Assert.Equal(3u, ring.ReadyCompletions);
        var seen = new List<ulong>();
        for (uint i = 0; i < 3; i++)
        {
            Assert.True(ring.TryPeekCompletion(i, out io_uring_cqe cqe));
            Assert.Equal(0, cqe.res);
            seen.Add(cqe.user_data);
        }

        ring.AdvanceCompletions(3);
        Assert.Equal([1001UL, 1002UL, 1003UL], seen);
        Assert.Equal(0u, ring.ReadyCompletions);
    }

    [Fact]
    public void TryGetSqe_WhenQueueFull_ReturnsNullUntilSubmitted()
    {
        using IoUringRing ring = IoUringRing.Create(4, 16, [], new List<string>());
        for (int i = 0; i < 4; i++)
        {
            io_uring_sqe* sqe = ring.TryGetSqe();
            Assert.True(sqe is not null);
            sqe->opcode = IORING_OP_NOP;
        }

        Assert.True(ring.TryGetSqe() is null);
        Assert.Equal(4, ring.SubmitAndWait(0));
        Assert.True(ring.TryGetSqe() is not null);
    }

    [Fact]
    public void ProbeOpcodes_ReportsWhatTheTransportRequires()
    {
        using IoUringRing ring = IoUringRing.Create(4, 16, [], new List<string>());

        bool[] supported = ring.ProbeOpcodes();

        foreach (byte op in new[] { IORING_OP_NOP, IORING_OP_ACCEPT, IORING_OP_RECV, IORING_OP_SEND, IORING_OP_SENDMSG, IORING_OP_SHUTDOWN, IORING_OP_CLOSE, IORING_OP_ASYNC_CANCEL, IORING_OP_READ })
        {
            Assert.True(supported[op], $"opcode {op} should be supported on this kernel");
        }

        Assert.False(supported[255]);
    }

    [Fact]
    public void BufferRing_RecvWithBufferSelect_FillsAKernelChosenBuffer()
    {
        using IoUringRing ring = IoUringRing.Create(8, 64, [], new List<string>());
        using IoUringBufferRing? buffers = IoUringBufferRing.TryCreate(ring, 7, 8, 4096, out int errno);
        Assert.NotNull(buffers);
        Assert.Equal(0, errno);
        using var listener = new System.Net.Sockets.Socket(System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Tcp);
        listener.Bind(new System.Net.IPEndPoint(System.Net.IPAddress.Loopback, 0));
        listener.Listen();
        using var client = new System.Net.Sockets.Socket(System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Tcp);
        client.Connect(listener.LocalEndPoint!);
        using System.Net.Sockets.Socket server = listener.Accept();
        client.Send("hello ring"u8);

        io_uring_sqe* sqe = ring.TryGetSqe();
        sqe->opcode = IORING_OP_RECV;
        sqe->fd = (int)server.Handle;
        sqe->flags = IOSQE_BUFFER_SELECT;
        sqe->buf_index = 7;
        sqe->user_data = 5;
        Assert.Equal(1, ring.SubmitAndWait(1));

        Assert.True(ring.TryPeekCompletion(0, out io_uring_cqe cqe));
        ring.AdvanceCompletions(1);
        Assert.Equal(5UL, cqe.user_data);
        Assert.Equal(10, cqe.res);
        Assert.NotEqual(0u, cqe.flags & IORING_CQE_F_BUFFER);
        ushort bufferId = (ushort)(cqe.flags >> IORING_CQE_BUFFER_SHIFT);
        Assert.Equal("hello ring", System.Text.Encoding.ASCII.GetString(buffers!.GetData(bufferId, cqe.res)));
        Assert.Equal(1, buffers.Lent);
        buffers.Return(bufferId);
        buffers.Publish();
        Assert.Equal(0, buffers.Lent);
    }
}
