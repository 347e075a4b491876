using System.Net;
using System.Net.Sockets;
using System.Text;
using KestrelProactor.Dispatching;
using KestrelProactor.Internal;
using KestrelProactor.Tests.Infrastructure;
using KestrelProactor.Tests.Reliability;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace KestrelProactor.Tests.Dispatching;

/// <summary>
/// A completion handler that throws must cost one connection, never the dispatcher or the process. The Windows
/// project links this file, so the faults are injected over IOCP as well as io_uring.
/// </summary>
[Collection(DispatcherHookCollection.Name)]
public class HandlerFaultTests
{
    public static TheoryData<TransportKind> OutputContinuationKinds => KindsHere(TransportKind.Proactor, TransportKind.ProactorInline, TransportKind.ProactorBasicTier);

    public static TheoryData<TransportKind, string> LastCompletions
    {
        get
        {
            (TransportKind Kind, string Operation)[] cases =
            [
                (TransportKind.Proactor, "Shutdown"),
                (TransportKind.Proactor, "Close"),
                (TransportKind.ProactorSingleShot, "Receive"),
                (TransportKind.ProactorBasicTier, "Receive"),
                (TransportKind.ProactorBasicTier, "Close"),
            ];
            var data = new TheoryData<TransportKind, string>();
            foreach (var (kind, operation) in cases.Select(c => (AsRunHere(c.Kind), c.Operation)).Distinct())
            {
                data.Add(kind, operation);
            }

            return data;
        }
    }

    /// <summary>The lent input's resume (buffer rings) and the copied input's flush continuation (basic tier; IOCP).</summary>
    public static TheoryData<TransportKind> InputResumeKinds => KindsHere(TransportKind.Proactor, TransportKind.ProactorBasicTier);

    public static TheoryData<TransportKind> AcceptKinds => KindsHere(TransportKind.Proactor, TransportKind.ProactorSingleShot);

    public static TheoryData<TransportKind> SingleShotAcceptKinds => KindsHere(TransportKind.ProactorSingleShot, TransportKind.ProactorBasicTier);

    [Fact]
    public async Task ReceiveHandlerThrows_AbortsThatConnection_OthersKeepBeingServed()
    {
        string marker = "X-Fault-" + Guid.NewGuid().ToString("N");
        ProactorDispatcher.TestReceiveHook = data =>
        {
            if (data.IndexOf(Encoding.ASCII.GetBytes(marker)) >= 0)
            {
                throw new InvalidOperationException("injected completion handler fault");
            }
        };

        try
        {
            await using WebApplication app = await StartAsync();
            string url = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
            var endpoint = new Uri(url);
            using var http = new HttpClient { Timeout = TestTimeouts.Default };
            Assert.Equal(TransportFactories.ExpectedBackend, await http.GetStringAsync(url + "/backend").DefaultTimeout());
            var factory = app.Services.GetServices<IConnectionListenerFactory>().OfType<ProactorTransportFactory>().Single();
            long faultsBefore = factory.Backend!.Dispatchers.Sum(d => d.HandlerFaults);

            // The faulting connection: its request carries the marker.
            using var victim = new Socket(SocketType.Stream, ProtocolType.Tcp);
            await victim.ConnectAsync(new IPEndPoint(IPAddress.Loopback, endpoint.Port)).DefaultTimeout();
            await victim.SendAsync(Encoding.ASCII.GetBytes($"GET /backend HTTP/1.1\r\nHost: x\r\n{marker}: 1\r\n\r\n")).DefaultTimeout();
            int received = await ReceiveUntilClosedAsync(victim);

            Assert.Equal(0, received);
            Assert.Equal(faultsBefore + 1, factory.Backend.Dispatchers.Sum(d => d.HandlerFaults));
            // Every dispatcher still serves: several fresh connections spread over all of them.
            for (int i = 0; i < 8; i++)
            {
                using var fresh = new HttpClient { Timeout = TestTimeouts.Default };
                Assert.Equal(TransportFactories.ExpectedBackend, await fresh.GetStringAsync(url + "/backend").DefaultTimeout());
            }
        }
        finally
        {
            ProactorDispatcher.TestReceiveHook = null;
        }
    }

    [Fact]
    public async Task ConnectionFaultHandlingThrows_IsLogged_ThatConnectionIsStillAbortedAndReleased()
    {
        // A receive handler throws, then the connection's own fault handling throws in turn: the dispatcher logs the
        // second throw (event 4) and aborts the connection itself, which would otherwise stay open for ever.
        var logs = new CountingLoggerProvider();
        await using VictimHost host = await VictimHost.StartAsync(logs: logs);
        string marker = "X-Fault-" + Guid.NewGuid().ToString("N");
        ProactorDispatcher.TestReceiveHook = data =>
        {
            if (data.IndexOf(Encoding.ASCII.GetBytes(marker)) >= 0)
            {
                throw new InvalidOperationException("injected completion handler fault");
            }
        };
        ProactorConnection.TestFaultHook = connection =>
        {
            if (host.IsVictim(connection))
            {
                throw new InvalidOperationException("injected fault in the connection's fault handling");
            }
        };

        try
        {
            await host.Victim.SendAsync(Encoding.ASCII.GetBytes($"GET /backend HTTP/1.1\r\nHost: x\r\n{marker}: 1\r\n\r\n")).DefaultTimeout();
            Assert.Equal(0, await ReceiveUntilClosedAsync(host.Victim));
        }
        finally
        {
            ProactorDispatcher.TestReceiveHook = null;
            ProactorConnection.TestFaultHook = null;
        }

        await host.AssertOneFaultReleasedAndServingAsync(freshRequests: 4);
        await AssertSecondThrowLoggedAsync(logs);
    }

    [Theory]
    [MemberData(nameof(OutputContinuationKinds))]
    public async Task OutputContinuationThrows_AbortsThatConnection_ReleasesIt_OthersKeepBeingServed(TransportKind kind)
    {
        // The output read's continuation is a work item the pipe queues with state of its own: the dispatcher
        // cannot see whose it is, so the connection must take its own fault (counted, logged, aborted).
        await using VictimHost host = await VictimHost.StartAsync(kind);
        ProactorDispatcher.TestHandlerHook = (owner, operation) =>
        {
            if (operation == OperationKind.Send && host.IsVictim(owner))
            {
                throw new InvalidOperationException("injected output continuation fault");
            }
        };

        try
        {
            await host.Victim.SendAsync(Encoding.ASCII.GetBytes("GET /backend HTTP/1.1\r\nHost: x\r\n\r\n")).DefaultTimeout();
            Assert.Equal(0, await ReceiveUntilClosedAsync(host.Victim));
        }
        finally
        {
            ProactorDispatcher.TestHandlerHook = null;
        }

        // The aborted connection left the operation table: every operation it had completed, its descriptor closed.
        await host.AssertOneFaultReleasedAndServingAsync(freshRequests: 8);
    }

    [Theory]
    [MemberData(nameof(InputResumeKinds))]
    public async Task InputResumeThrows_AbortsThatConnection_ReleasesIt_OthersKeepBeingServed(TransportKind kind)
    {
        // The input's resume after back-pressure is a continuation the pipe runs with state of its own (the lent
        // input's with buffer rings, the copied input's flush on the basic tier): as for the output's, the
        // connection must take its own fault. The body goes out only once the handler runs, so the application
        // has read and the input's lower pre-read threshold is gone: the only pause is the 1 MiB one (4 MiB are
        // sent), and its resume comes once the test saw it and let the handler read. Sent at once, under load the
        // body could reach the pre-read pause before Kestrel's first read, whose resume then threw before the
        // test looked, and the test waited for a pause that never came.
        await using VictimHost host = await VictimHost.StartAsync(kind);
        int resumes = 0;
        ProactorConnection.TestInputResumeHook = connection =>
        {
            if (host.IsVictim(connection))
            {
                Interlocked.Increment(ref resumes);
                throw new InvalidOperationException("injected input resume fault");
            }
        };

        try
        {
            const int BodyLength = 4 * 1024 * 1024;
            await host.Victim.SendAsync(Encoding.ASCII.GetBytes($"POST /drain HTTP/1.1\r\nHost: x\r\nContent-Length: {BodyLength}\r\n\r\n")).DefaultTimeout();
            await host.DrainEntered.DefaultTimeout();
            Task upload = Task.Run(async () =>
            {
                try
                {
                    await host.Victim.SendAsync(new byte[BodyLength]);
                }
                catch (SocketException)
                {
                    // The abort's reset cut the upload.
                }
            });
            await WaitUntilAsync(() => host.Dispatchers.SelectMany(d => d.OwnersForTests()).OfType<ProactorConnection>().Any(c => host.IsVictim(c) && c.IsReceivePaused));
            Assert.Equal(0, Volatile.Read(ref resumes));
            host.OpenDrain();
            await ReceiveUntilClosedAsync(host.Victim);
            await upload.DefaultTimeout();
        }
        finally
        {
            ProactorConnection.TestInputResumeHook = null;
        }

        Assert.Equal(1, Volatile.Read(ref resumes));
        await host.AssertOneFaultReleasedAndServingAsync(freshRequests: 4);
    }

    [Theory]
    [MemberData(nameof(LastCompletions))]
    public async Task HandlerThrowsBeforeItsBookkeeping_OnTheOperationsLastCompletion_ConnectionStillEndsAndIsReleased(TransportKind kind, string operationName)
    {
        OperationKind operation = Enum.Parse<OperationKind>(operationName);
        // The hook throws before the handler has marked its operation over (the worst place for a bug): the fault
        // path must still count the operation as ended, or the close waits for it for ever.
        await using VictimHost host = await VictimHost.StartAsync(kind);
        int fired = 0;
        ProactorDispatcher.TestHandlerHook = (owner, completed) =>
        {
            if (completed == operation && host.IsVictim(owner) && Interlocked.Exchange(ref fired, 1) == 0)
            {
                throw new InvalidOperationException($"injected {completed} handler fault");
            }
        };

        try
        {
            // Connection: close makes the server end its side: shutdown (FIN), then close.
            await host.Victim.SendAsync(Encoding.ASCII.GetBytes("GET /backend HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")).DefaultTimeout();
            await ReceiveUntilClosedAsync(host.Victim);
            // The connection left the operation table: every operation completed and its close finished.
            await WaitUntilAsync(() => host.Dispatchers.Sum(d => d.ConnectionCount) == host.OwnersBefore);
        }
        finally
        {
            ProactorDispatcher.TestHandlerHook = null;
        }

        Assert.Equal(1, fired);
        await host.AssertOneFaultReleasedAndServingAsync(freshRequests: 1);
    }

    [Theory]
    [MemberData(nameof(AcceptKinds))]
    public async Task AcceptHandlerThrows_ClosesThatSocket_ListenerKeepsAcceptingAndUnbinds(TransportKind kind)
    {
        WebApplication app = await StartAsync(kind);
        try
        {
            string url = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
            int port = new Uri(url).Port;
            ProactorDispatcher[] dispatchers = Dispatchers(app);
            long faultsBefore = dispatchers.Sum(d => d.HandlerFaults);
            int armed = 1;
            ProactorDispatcher.TestHandlerHook = (owner, operation) =>
            {
                if (operation == OperationKind.Accept && owner is ProactorConnectionListener { EndPoint: IPEndPoint local } && local.Port == port &&
                    Interlocked.Exchange(ref armed, 0) == 1)
                {
                    throw new InvalidOperationException("injected accept handler fault");
                }
            };

            try
            {
                // The accept that faults: its socket is closed by the dispatcher, so this client sees the end at once.
                using var victim = new Socket(SocketType.Stream, ProtocolType.Tcp);
                await victim.ConnectAsync(new IPEndPoint(IPAddress.Loopback, port)).DefaultTimeout();
                await victim.SendAsync(Encoding.ASCII.GetBytes("GET /backend HTTP/1.1\r\nHost: x\r\n\r\n")).DefaultTimeout();
                Assert.Equal(0, await ReceiveUntilClosedAsync(victim));
            }
            finally
            {
                ProactorDispatcher.TestHandlerHook = null;
            }

            Assert.Equal(0, armed);
            Assert.Equal(faultsBefore + 1, dispatchers.Sum(d => d.HandlerFaults));
            for (int i = 0; i < 8; i++)
            {
                using var fresh = new HttpClient { Timeout = TestTimeouts.Default };
                Assert.Equal(TransportFactories.ExpectedBackend, await fresh.GetStringAsync(url + "/backend").DefaultTimeout());
            }
        }
        finally
        {
            // Unbind must end every accept in flight: a second accept armed after the fault would never end.
            await app.StopAsync().DefaultTimeout();
            await app.DisposeAsync().AsTask().DefaultTimeout();
        }
    }

    [Fact]
    public async Task ListenerFaultHandlingThrows_WhileItsMultishotAcceptGoesOn_IsLogged_ListenerKeepsAcceptingAndUnbinds()
    {
        Assert.SkipWhen(OperatingSystem.IsWindows(), "IOCP accepts are single-shot: no accept goes on after the fault (see the AfterItsAcceptsLastCompletion test).");
        var logs = new CountingLoggerProvider();
        WebApplication app = await StartAsync(TransportKind.Proactor, logs);
        try
        {
            string url = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
            ProactorDispatcher[] dispatchers = Dispatchers(app);
            long faultsBefore = dispatchers.Sum(d => d.HandlerFaults);

            await FaultAcceptAndItsListenersFaultHandlingAsync(new Uri(url).Port);

            Assert.Equal(faultsBefore + 1, dispatchers.Sum(d => d.HandlerFaults));
            // The dispatcher logged the second throw and went on; the armed multishot accept still accepts.
            await AssertSecondThrowLoggedAsync(logs);
            for (int i = 0; i < 8; i++)
            {
                using var fresh = new HttpClient { Timeout = TestTimeouts.Default };
                Assert.Equal(TransportFactories.ExpectedBackend, await fresh.GetStringAsync(url + "/backend").DefaultTimeout());
            }
        }
        finally
        {
            await StopAndDisposeAsync(app);
        }
    }

    [Theory]
    [MemberData(nameof(SingleShotAcceptKinds))]
    public async Task ListenerFaultHandlingThrows_AfterItsAcceptsLastCompletion_IsLogged_ListenerStillUnbinds(TransportKind kind)
    {
        // The listener's fault handling throws before it has done anything: no retry is scheduled, so the
        // endpoint accepts no more, but the host must still stop. Unbind must not wait for an accept that the
        // listener's own state still calls active.
        var logs = new CountingLoggerProvider();
        WebApplication app = await StartAsync(kind, logs);
        try
        {
            string url = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
            ProactorDispatcher[] dispatchers = Dispatchers(app);
            long faultsBefore = dispatchers.Sum(d => d.HandlerFaults);

            await FaultAcceptAndItsListenersFaultHandlingAsync(new Uri(url).Port);

            Assert.Equal(faultsBefore + 1, dispatchers.Sum(d => d.HandlerFaults));
            await AssertSecondThrowLoggedAsync(logs);
        }
        finally
        {
            await StopAndDisposeAsync(app);
        }
    }

    [Theory]
    [MemberData(nameof(AcceptKinds))]
    public async Task ListenerFaultHandlingThrows_OnTheAcceptCancelledAtUnbind_IsLogged_ListenerStillUnbinds(TransportKind kind)
    {
        // At unbind the accept ends with a cancelled completion whose handler throws, and so does the listener's
        // fault handling, which would have stopped accepting: the unbind must still see that nothing is in flight.
        var logs = new CountingLoggerProvider();
        WebApplication app = await StartAsync(kind, logs);
        int acceptFaults = 0;
        int listenerFaults = 0;
        try
        {
            string url = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
            int port = new Uri(url).Port;
            // One connection served: the listener's accept is armed (it is armed on the dispatcher after the bind).
            using (var http = new HttpClient { Timeout = TestTimeouts.Default })
            {
                Assert.Equal(TransportFactories.ExpectedBackend, await http.GetStringAsync(url + "/backend").DefaultTimeout());
            }

            ProactorDispatcher.TestHandlerHook = (owner, operation) =>
            {
                if (operation == OperationKind.Accept && owner is ProactorConnectionListener { EndPoint: IPEndPoint local } && local.Port == port)
                {
                    Interlocked.Increment(ref acceptFaults);
                    throw new InvalidOperationException("injected accept handler fault");
                }
            };
            ProactorConnectionListener.TestFaultHook = listener =>
            {
                if (listener.EndPoint is IPEndPoint local && local.Port == port)
                {
                    Interlocked.Increment(ref listenerFaults);
                    throw new InvalidOperationException("injected fault in the listener's fault handling");
                }
            };

            await StopAndDisposeAsync(app);
        }
        finally
        {
            ProactorDispatcher.TestHandlerHook = null;
            ProactorConnectionListener.TestFaultHook = null;
        }

        Assert.Equal(1, acceptFaults);
        Assert.Equal(1, listenerFaults);
        Assert.Equal(1, logs.Count(CountingLoggerProvider.WorkItemFault));
    }

    [Fact]
    public async Task DispatcherLoopFails_ItsConnectionsEnd_NewOnesGoToTheOthers_HostStops()
    {
        WebApplication app = await StartAsync(TransportKind.Proactor);
        try
        {
            string url = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
            int port = new Uri(url).Port;
            ProactorDispatcher[] dispatchers = Dispatchers(app);
            // The one that does not accept (a listener is an owner but not a connection), so the endpoint lives on.
            // The listener registers on its dispatcher's thread, shortly after the bind.
            await WaitUntilAsync(() => dispatchers.Count(d => d.ConnectionCount > d.OpenConnections) == 1);
            ProactorDispatcher target = dispatchers.Single(d => d.ConnectionCount == d.OpenConnections);

            // Connections until one is served by the target (they are dealt in turn).
            var clients = new List<Socket>();
            Socket? victim = null;
            for (int i = 0; i < 2 * dispatchers.Length && victim is null; i++)
            {
                var client = new Socket(SocketType.Stream, ProtocolType.Tcp);
                clients.Add(client);
                await client.ConnectAsync(new IPEndPoint(IPAddress.Loopback, port)).DefaultTimeout();
                string body = await RequestAsync(client, "/dispatcher");
                if (int.Parse(body) == target.Id)
                {
                    victim = client;
                }
            }

            Assert.NotNull(victim);
            FailLoopOf(target);

            try
            {
                // The next pass of the target's loop fails; this request wakes it.
                await victim.SendAsync(Encoding.ASCII.GetBytes("GET /dispatcher HTTP/1.1\r\nHost: x\r\n\r\n")).DefaultTimeout();
                await ReceiveUntilClosedAsync(victim);
            }
            finally
            {
                ProactorDispatcher.TestLoopHook = null;
            }

            Assert.True(target.HasFailed);
            // Every connection the failed dispatcher owned was released; new connections go to the survivor.
            for (int i = 0; i < 8; i++)
            {
                using var fresh = new HttpClient { Timeout = TestTimeouts.Default };
                Assert.NotEqual(target.Id.ToString(), await fresh.GetStringAsync(url + "/dispatcher").DefaultTimeout());
            }

            foreach (Socket client in clients)
            {
                client.Dispose();
            }
        }
        finally
        {
            await StopAndDisposeAsync(app);
        }
    }

    [Fact]
    public async Task AcceptingDispatcherFails_ListenerMovesToASurvivor_NewConnectionsAreServed_HostStops()
    {
        var logs = new CountingLoggerProvider();
        WebApplication app = await StartAsync(TransportKind.Proactor, logs);
        try
        {
            string url = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
            int port = new Uri(url).Port;
            ProactorDispatcher[] dispatchers = Dispatchers(app);
            await WaitUntilAsync(() => dispatchers.Count(d => d.ConnectionCount > d.OpenConnections) == 1);
            ProactorDispatcher acceptor = dispatchers.Single(d => d.ConnectionCount > d.OpenConnections);
            FailLoopOf(acceptor);

            try
            {
                // A connection wakes the acceptor; its next pass fails.
                using var client = new Socket(SocketType.Stream, ProtocolType.Tcp);
                await client.ConnectAsync(new IPEndPoint(IPAddress.Loopback, port)).DefaultTimeout();
                await WaitUntilAsync(() => acceptor.HasFailed);
                await acceptor.Ended.DefaultTimeout();
            }
            finally
            {
                ProactorDispatcher.TestLoopHook = null;
            }

            Assert.Equal(1, logs.Count(CountingLoggerProvider.DispatcherFailed));
            if (OperatingSystem.IsWindows())
            {
                // A completion port cannot take over a listen socket bound to another port: the endpoint is closed
                // rather than left bound with nobody accepting, and Kestrel's accept loop reports why (Critical).
                await WaitUntilAsync(() => logs.Entries.Any(e => e.Category != CountingLoggerProvider.TransportCategory && e.Level == LogLevel.Critical));
                using var late = new Socket(SocketType.Stream, ProtocolType.Tcp);
                SocketException refused = await Assert.ThrowsAsync<SocketException>(() => late.ConnectAsync(new IPEndPoint(IPAddress.Loopback, port)).DefaultTimeout());
                Assert.Equal(SocketError.ConnectionRefused, refused.SocketErrorCode);
                return;
            }

            // The listen socket moved to the surviving dispatcher: the endpoint is still served, and Kestrel's
            // accept loop never saw an error.
            for (int i = 0; i < 8; i++)
            {
                using var fresh = new HttpClient { Timeout = TestTimeouts.Default };
                Assert.NotEqual(acceptor.Id.ToString(), await fresh.GetStringAsync(url + "/dispatcher").DefaultTimeout());
            }

            Assert.Equal(1, logs.Count(ListenerMoved));
            Assert.DoesNotContain(logs.Entries, e => e.Category != CountingLoggerProvider.TransportCategory && e.Level == LogLevel.Critical);
        }
        finally
        {
            // The moved listener unbinds from its new dispatcher.
            await StopAndDisposeAsync(app);
        }
    }

    [Fact]
    public async Task ConnectionClosedCallbackThrows_IsLogged_ServerKeepsServing()
    {
        var logs = new CountingLoggerProvider();
        await using WebApplication app = await StartAsync(
            TransportKind.Proactor,
            logs,
            listen => listen.Use(next => async connection =>
            {
                // Application code on the transport's ConnectionClosed token that throws when it fires.
                connection.ConnectionClosed.Register(static () => throw new InvalidOperationException("injected ConnectionClosed callback fault"));
                await next(connection);
            }));
        string url = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();

        using (var victim = new Socket(SocketType.Stream, ProtocolType.Tcp))
        {
            await victim.ConnectAsync(new IPEndPoint(IPAddress.Loopback, new Uri(url).Port)).DefaultTimeout();
            await victim.SendAsync(Encoding.ASCII.GetBytes("GET /backend HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")).DefaultTimeout();
            Assert.True(await ReceiveUntilClosedAsync(victim) > 0);
        }

        await WaitUntilAsync(() => logs.Count(CountingLoggerProvider.ConnectionClosedCallbackFault) >= 1);
        using var fresh = new HttpClient { Timeout = TestTimeouts.Default };
        Assert.Equal(TransportFactories.ExpectedBackend, await fresh.GetStringAsync(url + "/backend").DefaultTimeout());
        Assert.Equal(0, logs.Count(CountingLoggerProvider.CompletionHandlerFault) + logs.Count(CountingLoggerProvider.DispatcherFailed));
    }

    /// <summary>ProactorLog's event for a listener that moved off a failed dispatcher.</summary>
    private const int ListenerMoved = 42;

    /// <summary>
    /// The kinds a theory runs here, each once. IOCP accepts and receives are always single-shot into pipe memory,
    /// so there the single-shot and basic-tier kinds are the Proactor kind.
    /// </summary>
    private static TheoryData<TransportKind> KindsHere(params TransportKind[] kinds) => new(kinds.Select(AsRunHere).Distinct());

    private static TransportKind AsRunHere(TransportKind kind)
        => OperatingSystem.IsWindows() && kind is TransportKind.ProactorSingleShot or TransportKind.ProactorBasicTier ? TransportKind.Proactor : kind;

    /// <summary>One keep-alive GET on a raw socket; returns the body (Content-Length framed).</summary>
    private static async Task<string> RequestAsync(Socket socket, string path)
    {
        await socket.SendAsync(Encoding.ASCII.GetBytes($"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n")).DefaultTimeout();
        var buffer = new byte[4096];
        int filled = 0;
        while (true)
        {
            int n = await socket.ReceiveAsync(buffer.AsMemory(filled)).DefaultTimeout();
            Assert.NotEqual(0, n);
            filled += n;
            string text = Encoding.ASCII.GetString(buffer, 0, filled);
            int headerEnd = text.IndexOf("\r\n\r\n", StringComparison.Ordinal);
            if (headerEnd < 0)
            {
                continue;
            }

            int lengthAt = text.IndexOf("Content-Length: ", StringComparison.OrdinalIgnoreCase);
            int length = int.Parse(text.AsSpan(lengthAt + 16, text.IndexOf('\r', lengthAt) - lengthAt - 16));
            if (filled >= headerEnd + 4 + length)
            {
                return text.Substring(headerEnd + 4, length);
            }
        }
    }

    /// <summary>
    /// Makes the next accept on <paramref name="port"/> throw in its handler and then in the listener's own fault
    /// handling, and checks that the client of that accept sees its connection closed.
    /// </summary>
    private static async Task FaultAcceptAndItsListenersFaultHandlingAsync(int port)
    {
        int armed = 1;
        int listenerFaults = 0;
        ProactorDispatcher.TestHandlerHook = (owner, operation) =>
        {
            if (operation == OperationKind.Accept && owner is ProactorConnectionListener { EndPoint: IPEndPoint local } && local.Port == port &&
                Interlocked.Exchange(ref armed, 0) == 1)
            {
                throw new InvalidOperationException("injected accept handler fault");
            }
        };
        ProactorConnectionListener.TestFaultHook = listener =>
        {
            if (listener.EndPoint is IPEndPoint local && local.Port == port)
            {
                Interlocked.Increment(ref listenerFaults);
                throw new InvalidOperationException("injected fault in the listener's fault handling");
            }
        };

        try
        {
            using var victim = new Socket(SocketType.Stream, ProtocolType.Tcp);
            await victim.ConnectAsync(new IPEndPoint(IPAddress.Loopback, port)).DefaultTimeout();
            await victim.SendAsync(Encoding.ASCII.GetBytes("GET /backend HTTP/1.1\r\nHost: x\r\n\r\n")).DefaultTimeout();
            Assert.Equal(0, await ReceiveUntilClosedAsync(victim));
            // The socket is closed before the listener hears of the fault: keep its hook until it has run.
            await WaitUntilAsync(() => Volatile.Read(ref listenerFaults) != 0);
        }
        finally
        {
            ProactorDispatcher.TestHandlerHook = null;
            ProactorConnectionListener.TestFaultHook = null;
        }

        Assert.Equal(0, armed);
        Assert.Equal(1, listenerFaults);
    }

    /// <summary>Makes the next pass of <paramref name="target"/>'s loop fail, as a ring error would (other dispatchers, and other tests', go on).</summary>
    private static void FailLoopOf(ProactorDispatcher target)
        => ProactorDispatcher.TestLoopHook = d =>
        {
            if (ReferenceEquals(d, target))
            {
                throw new InvalidOperationException("injected ring failure");
            }
        };

    private static async Task StopAndDisposeAsync(WebApplication app)
    {
        await app.StopAsync().DefaultTimeout();
        await app.DisposeAsync().AsTask().DefaultTimeout();
    }

    private static ProactorDispatcher[] Dispatchers(WebApplication app)
        => app.Services.GetServices<IConnectionListenerFactory>().OfType<ProactorTransportFactory>().Single().Backend!.Dispatchers;

    private static async Task WaitUntilAsync(Func<bool> condition)
    {
        using var deadline = new CancellationTokenSource(TestTimeouts.Default);
        while (!condition())
        {
            await Task.Delay(20, deadline.Token);
        }
    }

    /// <summary>A throw in an owner's own fault handling was logged once (event 4), and the dispatcher lived on.</summary>
    private static async Task AssertSecondThrowLoggedAsync(CountingLoggerProvider logs)
    {
        await WaitUntilAsync(() => logs.Count(CountingLoggerProvider.WorkItemFault) == 1);
        Assert.Equal(0, logs.Count(CountingLoggerProvider.DispatcherFailed));
    }

    private static async Task<int> ReceiveUntilClosedAsync(Socket socket)
    {
        var buffer = new byte[4096];
        int total = 0;
        try
        {
            while (true)
            {
                int n = await socket.ReceiveAsync(buffer).DefaultTimeout();
                if (n == 0)
                {
                    return total;
                }

                total += n;
            }
        }
        catch (SocketException ex) when (ex.SocketErrorCode == SocketError.ConnectionReset)
        {
            return total;
        }
    }

    /// <summary>
    /// A started host, its dispatchers' fault and owner counts once a first request has been served, and one raw
    /// client connected to it: the connection a test injects its fault into.
    /// </summary>
    private sealed class VictimHost : IAsyncDisposable
    {
        private readonly WebApplication _app;
        private readonly HttpClient _firstClient;
        private readonly string _url;
        private readonly int _port;
        private int _victimPort;

        private VictimHost(WebApplication app, string url, Socket victim, HttpClient firstClient)
        {
            _app = app;
            _firstClient = firstClient;
            _url = url;
            _port = new Uri(url).Port;
            Dispatchers = HandlerFaultTests.Dispatchers(app);
            FaultsBefore = Dispatchers.Sum(d => d.HandlerFaults);
            OwnersBefore = Dispatchers.Sum(d => d.ConnectionCount);
            Victim = victim;
        }

        public ProactorDispatcher[] Dispatchers { get; }

        public long FaultsBefore { get; }

        public long OwnersBefore { get; }

        public Socket Victim { get; }

        public static async Task<VictimHost> StartAsync(TransportKind kind = TransportKind.Proactor, CountingLoggerProvider? logs = null)
        {
            WebApplication app = await HandlerFaultTests.StartAsync(kind, logs);
            var victim = new Socket(SocketType.Stream, ProtocolType.Tcp);
            var http = new HttpClient { Timeout = TestTimeouts.Default };
            try
            {
                string url = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
                Assert.Equal(TransportFactories.ExpectedBackend, await http.GetStringAsync(url + "/backend").DefaultTimeout());
                // Counted before the victim connects, so its connection is not among the owners; the first client's
                // keep-alive connection is, and stays open until the host is disposed.
                var host = new VictimHost(app, url, victim, http);
                await victim.ConnectAsync(new IPEndPoint(IPAddress.Loopback, host._port)).DefaultTimeout();
                host._victimPort = ((IPEndPoint)victim.LocalEndPoint!).Port;
                return host;
            }
            catch
            {
                victim.Dispose();
                http.Dispose();
                await app.DisposeAsync();
                throw;
            }
        }

        /// <summary>Lets the /drain handler read its request body.</summary>
        public void OpenDrain() => _app.Services.GetRequiredService<DrainGate>().Open();

        /// <summary>Completes once the /drain handler runs: Kestrel has read the request's headers.</summary>
        public Task DrainEntered => _app.Services.GetRequiredService<DrainGate>().Entered;

        /// <summary>Both ports: another test's server may have a client on the same ephemeral port.</summary>
        public bool IsVictim(IOperationOwner owner)
            => owner is ProactorConnection { RemoteEndPoint: IPEndPoint remote, LocalEndPoint: IPEndPoint local } &&
               remote.Port == _victimPort && local.Port == _port;

        /// <summary>The fault was counted once, the victim's connection left the operation table, and fresh connections are served.</summary>
        public async Task AssertOneFaultReleasedAndServingAsync(int freshRequests)
        {
            Assert.Equal(FaultsBefore + 1, Dispatchers.Sum(d => d.HandlerFaults));
            await WaitUntilAsync(() => Dispatchers.Sum(d => d.ConnectionCount) == OwnersBefore);
            for (int i = 0; i < freshRequests; i++)
            {
                using var fresh = new HttpClient { Timeout = TestTimeouts.Default };
                Assert.Equal(TransportFactories.ExpectedBackend, await fresh.GetStringAsync(_url + "/backend").DefaultTimeout());
            }
        }

        public async ValueTask DisposeAsync()
        {
            Victim.Dispose();
            _firstClient.Dispose();
            await _app.DisposeAsync();
        }
    }

    private static async Task<WebApplication> StartAsync(TransportKind kind = TransportKind.Proactor, CountingLoggerProvider? logs = null, Action<ListenOptions>? listen = null)
    {
        WebApplicationBuilder builder = WebApplication.CreateSlimBuilder();
        if (logs is not null)
        {
            builder.Logging.AddProvider(logs);
        }

        builder.WebHost.UseKestrel(k => k.Listen(IPAddress.Loopback, 0, o => listen?.Invoke(o)));
        builder.WebHost.UseProactorTransport(o => TransportFactories.Configure(kind, o));
        builder.Services.AddSingleton<DrainGate>();
        WebApplication app = builder.Build();
        app.MapGet("/backend", (HttpContext c) => c.Features.Get<IProactorConnectionFeature>()?.Backend ?? "sockets");
        app.MapPost("/drain", async (HttpContext c) =>
        {
            // Reads only once the test opens the gate, so a large upload meets the input's back-pressure first.
            await c.RequestServices.GetRequiredService<DrainGate>().WaitAsync();
            await c.Request.Body.CopyToAsync(Stream.Null);
            return "drained";
        });
        app.MapGet("/dispatcher", (HttpContext c) =>
        {
            // Content-Length framed, so a raw client reads one answer and keeps the connection.
            string id = c.Features.Get<IProactorConnectionFeature>()!.DispatcherId.ToString();
            c.Response.ContentLength = id.Length;
            return c.Response.WriteAsync(id);
        });
        await app.StartAsync().DefaultTimeout();
        return app;
    }

    /// <summary>Holds the /drain handler until the test has seen what it waits for.</summary>
    private sealed class DrainGate
    {
        private readonly TaskCompletionSource _opened = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private readonly TaskCompletionSource _entered = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public Task Entered => _entered.Task;

        public void Open() => _opened.TrySetResult();

        public Task WaitAsync()
        {
            _entered.TrySetResult();
            return _opened.Task.WaitAsync(TestTimeouts.Default);
        }
    }
}
