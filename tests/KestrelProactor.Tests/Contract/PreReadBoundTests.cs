using System.IO.Pipelines;
using System.Net.Sockets;
using KestrelProactor.Internal;
using KestrelProactor.Tests.Infrastructure;
using Microsoft.AspNetCore.Connections;

namespace KestrelProactor.Tests.Contract;

/// <summary>
/// A connection starts receiving at accept, before Kestrel takes it. With the thread pool too busy to take it, its
/// input would fill to MaxReadBufferSize (1 MiB by default); the proactor stops at 64 KiB until the application
/// first reads. The socket transport has no such bound: it is a design choice of the proactor, not a parity point.
/// </summary>
public sealed class PreReadBoundTests
{
    private const int ReceiveBufferSize = 16 * 1024;

    /// <summary>
    /// Kinds whose receives are single-shot, so the pause point is exact: the lending input (ring tier) and the
    /// copying input (basic tier; IOCP). A multishot receive adds whatever it delivered before its cancel landed.
    /// </summary>
    public static TheoryData<TransportKind> SingleShotKinds => OperatingSystem.IsWindows()
        ? new(TransportKind.Proactor, TransportKind.ProactorInline)
        : new(TransportKind.ProactorSingleShot, TransportKind.ProactorBasicTier);

    [Theory]
    [MemberData(nameof(SingleShotKinds))]
    public async Task NotReadYet_HoldsAboutPreReadThreshold_ThenReadsEverything(TransportKind kind)
    {
        // Arrange
        const int Upload = 4 * 1024 * 1024;
        var logs = new CapturingLoggerFactory();
        await using ListenerHarness harness = await ListenerHarness.BindAsync(kind, loggerFactory: logs, configure: o => o.ReceiveBufferSize = ReceiveBufferSize);
        (Socket client, ConnectionContext connection) = await harness.ConnectAndAcceptAsync();
        byte[] upload = RawClient.CreatePayload(Upload);

        // Act: the client sends 4 MiB; nothing reads until the input paused.
        Task send = RawClient.SendAllAsync(client, upload);
        await Eventually.TrueAsync(() => logs.Entries.Any(e => e.EventId.Name == "ConnectionPause"), "the input to pause before the first read");
        // The first read shows what arrived before it: the resume it causes may run at once, on the dispatcher, but
        // not into this result. The copying input's hook holds the reading thread where the resume was scheduled,
        // so a read that took its result only after that would see the resumed receives' bytes.
        ReadResult first;
        ProactorCopyingInputReader.TestFirstReadHook = c =>
        {
            if (ReferenceEquals(c, connection))
            {
                Thread.Sleep(300);
            }
        };
        try
        {
            first = await connection.Transport.Input.ReadAsync().AsTask().DefaultTimeout();
        }
        finally
        {
            ProactorCopyingInputReader.TestFirstReadHook = null;
        }

        long heldBeforeRead = first.Buffer.Length;
        byte[] received = await ReadAllAsync(connection.Transport.Input, first, Upload);
        await send.DefaultTimeout();

        // Assert: about 64 KiB (one receive more at most) held before the first read; then every byte, in order.
        TestContext.Current.TestOutputHelper?.WriteLine($"Held before the first read: {heldBeforeRead} bytes.");
        Assert.InRange(heldBeforeRead, ProactorInputPipe.PreReadPauseThreshold, ProactorInputPipe.PreReadPauseThreshold + ReceiveBufferSize);
        Assert.Contains(logs.Entries, e => e.EventId.Name == "ConnectionResume");
        Assert.Equal(RawClient.Hash(upload), RawClient.Hash(received));
    }

    private static async Task<byte[]> ReadAllAsync(PipeReader input, ReadResult result, int length)
    {
        using var received = new MemoryStream();
        while (true)
        {
            foreach (ReadOnlyMemory<byte> segment in result.Buffer)
            {
                received.Write(segment.Span);
            }

            input.AdvanceTo(result.Buffer.End);
            if (received.Length >= length || result.IsCompleted)
            {
                return received.ToArray();
            }

            result = await input.ReadAsync().AsTask().DefaultTimeout();
        }
    }
}
