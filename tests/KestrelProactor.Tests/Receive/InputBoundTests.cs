using System.IO.Pipelines;
using System.Net.Sockets;
using KestrelProactor.Internal;
using KestrelProactor.Tests.Contract;
using KestrelProactor.Tests.Infrastructure;
using Microsoft.AspNetCore.Connections;

namespace KestrelProactor.Tests.Receive;

/// <summary>What a connection's lending input may hold: its share of the ring at any MaxReadBufferSize (the bound before the application reads is in PreReadBoundTests).</summary>
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

    private static long Lent(ListenerHarness harness)
        => ((ProactorTransportFactory)harness.Factory).Backend!.Dispatchers.Sum(d => d.ReceiveBuffersLent);
}
