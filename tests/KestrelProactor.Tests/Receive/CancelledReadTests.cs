using System.Net.Sockets;
using System.Text;
using KestrelProactor.Tests.EndToEnd;
using KestrelProactor.Tests.Infrastructure;

namespace KestrelProactor.Tests.Receive;

/// <summary>
/// A canceled read through real Kestrel: the application cancels its body read before any body byte arrived, the
/// bytes arrive, and then (as Kestrel does itself after a keep-alive time-out or a graceful stop) the empty canceled
/// result's positions are passed to AdvanceTo. The input's empty result used to point into an empty array, and the
/// cast of that array to the input's segment type threw InvalidCastException: the request failed.
/// </summary>
public sealed class CancelledReadTests
{
    /// <summary>
    /// The kinds whose input builds its own read results (the lending input). Elsewhere the input is System.IO.Pipelines'
    /// Pipe, the reference itself, and nothing outside tells when the bytes reached it without reading them.
    /// </summary>
    public static TheoryData<TransportKind> LendingKinds => new(TransportKind.Proactor, TransportKind.ProactorInline, TransportKind.ProactorSingleShot);

    [Theory]
    [MemberData(nameof(LendingKinds))]
    public async Task BodyRead_CanceledBeforeBytes_ThenAdvancedAfterThem_ReadsTheBody(TransportKind kind)
    {
        await using ReceiveServer server = await ReceiveServer.StartAsync(kind);
        (Socket client, ReadProgress _) = await server.ConnectAsync();
        using Socket connected = client;
        var http = new RawHttp(client);
        await http.SendAsciiAsync("POST /cancel-then-read HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\n", TestContext.Current.CancellationToken).DefaultTimeout();
        await server.CancelledReadSeen.Task.DefaultTimeout();

        // Act: the body arrives while the application holds the canceled result, and the input has it (in a new
        // pool block it copied the 5 bytes into, or in a lent buffer) before the application advances.
        int rentedBefore = server.Pool.Rented;
        long lentBefore = server.LentBuffers;
        await http.SendAsciiAsync("hello", TestContext.Current.CancellationToken).DefaultTimeout();
        await WaitUntilAsync(() => server.Pool.Rented > rentedBefore || server.LentBuffers > lentBefore);
        server.ContinueCancelledRead.SetResult();
        var (status, _, body) = await http.ReadResponseAsync(TestContext.Current.CancellationToken).DefaultTimeout();

        // Assert
        Assert.Equal("HTTP/1.1 200 OK", status);
        Assert.Equal("canceled=True read 5", Encoding.ASCII.GetString(body));
    }

    private static async Task WaitUntilAsync(Func<bool> condition)
    {
        DateTime deadline = DateTime.UtcNow + TestTimeouts.Default;
        while (!condition())
        {
            Assert.True(DateTime.UtcNow < deadline, "The condition was not met in time.");
            await Task.Delay(10, TestContext.Current.CancellationToken);
        }
    }
}
