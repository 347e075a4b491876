using System.IO.Pipelines;
using System.Net.Sockets;
using KestrelProactor.Internal;
using KestrelProactor.Tests.Contract;
using KestrelProactor.Tests.Infrastructure;
using Microsoft.AspNetCore.Connections;

namespace KestrelProactor.Tests.Receive;

/// <summary>What a connection's lending input may hold: its share of the ring at any MaxReadBufferSize, and a bound before the application reads.</summary>
public sealed class InputBoundTests
{
    private const int ReceiveBufferSize = 16 * 1024;

    public static TheoryData<TransportKind> LendingKinds => new(TransportKind.Proactor, TransportKind.ProactorInline, TransportKind.ProactorSingleShot);

    [Theory]
    [MemberData(nameof(LendingKinds))]
    public async Task HugeMaxReadBufferSize_LargeReceivesAreStillLent(TransportKind kind)
    {
        // The cap on lent buffers is MaxReadBufferSize / ReceiveBufferSize + 1, at most an eighth of the ring. Worked
        // out in int, 2^50 / 16 KiB wrapped to 0 and the cap fell to 2: past two buffers every receive was copied.
        const int Upload = 512 * 1024;
        await using ListenerHarness harness = await ListenerHarness.BindAsync(kind, configure: o => o.MaxReadBufferSize = 1L << 50);
        (Socket client, ConnectionContext connection) = await harness.ConnectAndAcceptAsync();
        PipeReader input = connection.Transport.Input;
        Task<ReadResult> first = input.ReadAsync().AsTask();

        Task send = RawClient.SendAllAsync(client, RawClient.CreatePayload(Upload));
        ReadResult result = await first.DefaultTimeout();
        while (result.Buffer.Length < Upload)
        {
            // Examine everything, consume nothing: the input holds the whole upload.
            input.AdvanceTo(result.Buffer.Start, result.Buffer.End);
            result = await input.ReadAsync().AsTask().DefaultTimeout();
        }

        long lent = Lent(harness);
        TestContext.Current.TestOutputHelper?.WriteLine($"{Upload} bytes held, {lent} receive buffers lent.");
        Assert.True(lent > 2, $"Only {lent} receive buffers were lent for {Upload} bytes.");
        input.AdvanceTo(result.Buffer.End);
        await send.DefaultTimeout();
    }

    [Fact]
    public async Task NotReadYet_HoldsAboutPreReadThreshold_ThenReadsEverything()
    {
        // A connection starts receiving at accept, before Kestrel takes it; with the thread pool too busy to take it,
        // it held up to MaxReadBufferSize (1 MiB). Single-shot receives: the pause point is exact (a multishot
        // receive adds whatever it delivered before its cancel landed, held apart, and that varies).
        const int Upload = 4 * 1024 * 1024;
        var logs = new CapturingLoggerFactory();
        await using ListenerHarness harness = await ListenerHarness.BindAsync(TransportKind.ProactorSingleShot, loggerFactory: logs);
        (Socket client, ConnectionContext connection) = await harness.ConnectAndAcceptAsync();
        byte[] upload = RawClient.CreatePayload(Upload);
        Task send = RawClient.SendAllAsync(client, upload);
        await ReceiveEventTests.WaitUntilAsync(() => logs.Entries.Any(e => e.EventId.Name == "ConnectionPause"));

        // The first read shows what arrived before it (the resume it causes runs later, on the dispatcher).
        ReadResult first = await connection.Transport.Input.ReadAsync().AsTask().DefaultTimeout();
        TestContext.Current.TestOutputHelper?.WriteLine($"Held before the first read: {first.Buffer.Length} bytes.");
        Assert.InRange(first.Buffer.Length, ProactorInputPipe.PreReadPauseThreshold, ProactorInputPipe.PreReadPauseThreshold + ReceiveBufferSize);

        // The first read lifted the bound to MaxReadBufferSize; every byte arrives, in order.
        using var received = new MemoryStream();
        ReadResult result = first;
        while (true)
        {
            foreach (ReadOnlyMemory<byte> segment in result.Buffer)
            {
                received.Write(segment.Span);
            }

            connection.Transport.Input.AdvanceTo(result.Buffer.End);
            if (received.Length >= Upload)
            {
                break;
            }

            result = await connection.Transport.Input.ReadAsync().AsTask().DefaultTimeout();
        }

        await send.DefaultTimeout();
        Assert.Equal(RawClient.Hash(upload), RawClient.Hash(received.ToArray()));
    }

    private static long Lent(ListenerHarness harness)
        => ((ProactorTransportFactory)harness.Factory).Backend!.Dispatchers.Sum(d => d.ReceiveBuffersLent);
}
