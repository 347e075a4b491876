using System.IO.Pipelines;
using System.Net;
using System.Net.Sockets;
using KestrelProactor.Dispatching;
using KestrelProactor.Internal;
using KestrelProactor.Tests.Infrastructure;
using Microsoft.AspNetCore.Connections;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Options;

namespace KestrelProactor.Tests.Dispatching;

/// <summary>
/// What a ring does between its loop's end and its close: a close queued in the last pass still closes the
/// descriptor (a healthy ring submits it, a failed one closes it without the ring), and a connection whose memory
/// is kept for the kernel still ends the application's pending read and flush.
/// </summary>
[Collection(DispatcherHookCollection.Name)]
public sealed class DispatcherEndDrainTests
{
    [Fact]
    public async Task LoopFailsAfterACloseWasQueued_TheDescriptorIsClosedAndThePeerSeesTheReset()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "io_uring");
        await using var server = await Server.StartAsync(TransportKind.Proactor);
        using var client = new Socket(SocketType.Stream, ProtocolType.Tcp);
        ProactorConnection connection = await server.ConnectAsync(client);
        ProactorDispatcher target = connection.Dispatcher;
        int fd = (int)connection.Socket.DangerousGetHandle();
        string? before = DescriptorTarget(fd);
        try
        {
            // Fails the loop at the top of the pass after the close SQE was filled (the handle is marked closed as
            // the SQE is filled), before any enter hands it to the kernel.
            ProactorDispatcher.TestLoopHook = d =>
            {
                if (ReferenceEquals(d, target) && connection.Socket.IsClosed)
                {
                    throw new InvalidOperationException("injected ring failure");
                }
            };
            connection.Abort(new ConnectionAbortedException("abort"));
            await target.Ended.DefaultTimeout();
        }
        finally
        {
            ProactorDispatcher.TestLoopHook = null;
        }

        Assert.True(target.HasFailed);
        await connection.DisposeAsync().AsTask().DefaultTimeout();
        Assert.NotEqual(before, DescriptorTarget(fd));
        Assert.True(client.Poll(TestTimeouts.Default, SelectMode.SelectRead), "the peer never heard the close");
        Assert.Throws<SocketException>(() => client.Receive(new byte[1]));
    }

    [Fact]
    public async Task StopDeadlinePassesAfterACloseWasQueued_TheCloseStillReachesTheKernel()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "io_uring");
        var server = await Server.StartAsync(TransportKind.Proactor);
        using var client = new Socket(SocketType.Stream, ProtocolType.Tcp);
        ProactorConnection connection = await server.ConnectAsync(client);
        ProactorDispatcher target = connection.Dispatcher;
        int fd = (int)connection.Socket.DangerousGetHandle();
        string? before = DescriptorTarget(fd);
        await server.UnbindAsync();
        int stalled = 0;
        try
        {
            // The pass that fills the close SQE runs past the stop's deadline: the loop ends before its next enter.
            ProactorDispatcher.TestLoopHook = d =>
            {
                if (ReferenceEquals(d, target) && d.StopRequested && connection.Socket.IsClosed && Interlocked.Exchange(ref stalled, 1) == 0)
                {
                    Thread.Sleep(ProactorDispatcher.StopTimeout + TimeSpan.FromMilliseconds(200));
                }
            };
            await server.Factory.DisposeAsync().AsTask().WaitAsync(ProactorDispatcher.StopTimeout + ProactorDispatcher.QuiesceTimeout + TestTimeouts.Default);
        }
        finally
        {
            ProactorDispatcher.TestLoopHook = null;
        }

        Assert.Equal(1, stalled);
        Assert.False(target.HasFailed);
        await connection.DisposeAsync().AsTask().DefaultTimeout();
        Assert.NotEqual(before, DescriptorTarget(fd));
        Assert.True(client.Poll(TestTimeouts.Default, SelectMode.SelectRead), "the peer never heard the close");
        Assert.Throws<SocketException>(() => client.Receive(new byte[1]));
    }

    private static string? DescriptorTarget(int fd)
    {
        try
        {
            return File.ResolveLinkTarget($"/proc/self/fd/{fd}", false)?.ToString();
        }
        catch (IOException)
        {
            return null;
        }
    }

    /// <summary>
    /// Writes 64 KiB at a time to <paramref name="output"/> until a flush stays pending: a peer that reads nothing
    /// (with a small receive buffer) then leaves a send in the kernel and the output past its pause threshold. A flush
    /// that completes only means the socket took it all, so writing goes on. Returns that pending flush.
    /// </summary>
    internal static async Task<Task<FlushResult>> WriteUntilSendStaysInKernelAsync(PipeWriter output)
    {
        Task<FlushResult> flush = Task.FromResult(default(FlushResult));
        for (int i = 0; i < 1024 && flush.IsCompleted; i++)
        {
            output.GetSpan(64 * 1024).Slice(0, 64 * 1024).Fill(1);
            output.Advance(64 * 1024);
            flush = output.FlushAsync().AsTask();
            await Task.WhenAny(flush, Task.Delay(200));
        }

        Assert.False(flush.IsCompleted, "the socket took 64 MiB without the peer reading");
        return flush;
    }

    internal static async Task WaitUntilAsync(Func<bool> condition)
    {
        using var deadline = new CancellationTokenSource(TestTimeouts.Default);
        while (!condition())
        {
            await Task.Delay(20, deadline.Token);
        }
    }

    /// <summary>A transport factory with one listener on loopback, torn down in order.</summary>
    internal sealed class Server : IAsyncDisposable
    {
        private bool _unbound;

        private Server(ProactorTransportFactory factory, IConnectionListener listener)
        {
            Factory = factory;
            Listener = listener;
        }

        public ProactorTransportFactory Factory { get; }

        public IConnectionListener Listener { get; }

        public static async Task<Server> StartAsync(TransportKind kind, Action<ProactorTransportOptions>? configure = null)
        {
            ProactorTransportOptions options = TransportFactories.CreateOptions(kind, configure);
            var factory = new ProactorTransportFactory(Options.Create(options), NullLoggerFactory.Instance);
            IConnectionListener listener = await factory.BindAsync(new IPEndPoint(IPAddress.Loopback, 0)).DefaultTimeout();
            return new Server(factory, listener);
        }

        /// <summary>Connects <paramref name="client"/> and returns the server's side once its receive is armed.</summary>
        public async Task<ProactorConnection> ConnectAsync(Socket client)
        {
            await client.ConnectAsync(Listener.EndPoint).DefaultTimeout();
            var connection = (ProactorConnection)(await Listener.AcceptAsync().DefaultTimeout())!;
            await WaitUntilAsync(() => connection.ReceiveActive);
            return connection;
        }

        public async Task UnbindAsync()
        {
            if (!_unbound)
            {
                _unbound = true;
                await Listener.UnbindAsync().DefaultTimeout();
                await Listener.DisposeAsync().DefaultTimeout();
            }
        }

        public async ValueTask DisposeAsync()
        {
            await UnbindAsync();
            await Factory.DisposeAsync().AsTask().WaitAsync(ProactorDispatcher.StopTimeout + TestTimeouts.Default);
        }
    }
}
