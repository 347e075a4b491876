using System.Buffers;
using System.IO.Pipelines;
using System.Net.Sockets;
using System.Text;
using KestrelProactor.Dispatching;
using KestrelProactor.Tests.Contract;
using KestrelProactor.Tests.Infrastructure;
using KestrelProactor.Tests.Reliability;
using Microsoft.AspNetCore.Connections;

namespace KestrelProactor.Tests.Dispatching;

/// <summary>
/// An accepted connection starts on its dispatcher at once, not when Kestrel's accept loop (a thread hop away)
/// takes it: by the time Kestrel reads, the request is usually in the pipe.
/// </summary>
public class AcceptPathTests
{
    [Theory]
    [InlineData(TransportKind.Proactor)]
    [InlineData(TransportKind.ProactorBasicTier)]
    public async Task AcceptedConnection_ReceivesBeforeKestrelTakesIt_TheBytesWaitInItsInput(TransportKind kind)
    {
        // Arrange
        await using ListenerHarness harness = await ListenerHarness.BindAsync(kind);
        ProactorDispatcher[] dispatchers = ((ProactorTransportFactory)harness.Factory).Backend!.Dispatchers;
        long connectionsBefore = dispatchers.Sum(d => d.OpenConnections);
        long lentBefore = dispatchers.Sum(d => d.ReceiveBuffersLent);
        // 8 KiB, so that the receive is lent (the input copies receives under a quarter of a buffer).
        byte[] request = Encoding.ASCII.GetBytes(string.Concat(Enumerable.Repeat("early bytes ", 683)));

        // Act: connect and send, and only then, once the transport has the bytes, let Kestrel's side accept.
        Socket client = await harness.ConnectAsync();
        await Contract.RawClient.SendAllAsync(client, request).DefaultTimeout();
        await FaultServer.WaitUntilAsync(
            () => dispatchers.Sum(d => d.OpenConnections) == connectionsBefore + 1,
            TestTimeouts.Default,
            "the accepted connection to start on its dispatcher before AcceptAsync");
        if (kind == TransportKind.Proactor)
        {
            await FaultServer.WaitUntilAsync(
                () => dispatchers.Sum(d => d.ReceiveBuffersLent) > lentBefore,
                TestTimeouts.Default,
                "the bytes to arrive in a lent receive buffer before AcceptAsync");
        }

        ConnectionContext connection = await harness.AcceptAsync();
        // The basic tier receives into pipe memory a small block at a time (2 KiB until a receive fills its
        // block), so the request may take several receives: read until it is all there.
        var received = new List<byte>();
        while (received.Count < request.Length)
        {
            ReadResult input = await connection.Transport.Input.ReadAsync().AsTask().DefaultTimeout();
            received.AddRange(input.Buffer.ToArray());
            connection.Transport.Input.AdvanceTo(input.Buffer.End);
            Assert.False(input.IsCompleted && received.Count < request.Length, "The input ended before the whole request arrived.");
        }

        // Assert
        Assert.Equal(request, received.ToArray());
    }
}
