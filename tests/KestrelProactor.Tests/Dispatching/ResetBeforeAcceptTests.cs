using System.IO.Pipelines;
using System.Net;
using System.Net.Sockets;
using KestrelProactor.Dispatching;
using KestrelProactor.Tests.Contract;
using KestrelProactor.Tests.Infrastructure;
using Microsoft.AspNetCore.Connections;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Options;

namespace KestrelProactor.Tests.Dispatching;

/// <summary>
/// A client that resets its connection before the server accepted it. On Linux, Kestrel's socket transport gets that
/// connection from accept with the client's address and hands it to Kestrel, which sees the reset (and counts the
/// connection in its metrics). The proactor accepted it too but dropped it, because getpeername no longer answers
/// for a reset socket: seen as Kestrel's own <c>ClientAbortingConnectionImmediatelyIsNotLoggedHigherThanDebug</c>
/// timing out on a busy machine, waiting for a connection that never reached Kestrel.
/// </summary>
[Collection(DispatcherHookCollection.Name)]
public sealed class ResetBeforeAcceptTests
{
    public static TheoryData<TransportKind> Kinds => new(TransportKind.Sockets, TransportKind.Proactor);

    [Theory]
    [MemberData(nameof(Kinds))]
    public async Task ClientResetsBeforeTheAccept_TheConnectionIsStillHandedOut_WithTheClientsAddress(TransportKind kind)
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "Linux hands out a connection reset in the backlog");
        IConnectionListenerFactory factory = TransportFactories.Create(kind);
        IConnectionListener listener = await ((IConnectionListenerFactory)factory).BindAsync(new IPEndPoint(IPAddress.Loopback, 0)).DefaultTimeout();
        using var gate = new ManualResetEventSlim();
        try
        {
            // Arrange: the proactor accepts as soon as a connection lands (its accept is armed), so its dispatchers
            // are held until the client has reset; the socket transport accepts only when asked.
            if (factory is ProactorTransportFactory { Backend: { } backend })
            {
                foreach (ProactorDispatcher dispatcher in backend.Dispatchers)
                {
                    using var blocked = new ManualResetEventSlim();
                    dispatcher.Schedule(static state =>
                    {
                        var (b, g) = ((ManualResetEventSlim, ManualResetEventSlim))state!;
                        b.Set();
                        g.Wait(TestTimeouts.Default);
                    }, (blocked, gate));
                    Assert.True(blocked.Wait(TestTimeouts.Default), $"dispatcher {dispatcher.Id} was not held");
                }
            }

            var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            await client.ConnectAsync(listener.EndPoint).DefaultTimeout();
            EndPoint clientEndPoint = client.LocalEndPoint!;
            RawClient.Reset(client);

            // Act
            gate.Set();
            ConnectionContext connection = (await listener.AcceptAsync().AsTask().DefaultTimeout())!;

            // Assert: the reset connection, with its client's address; its input ends.
            Assert.Equal(clientEndPoint, connection.RemoteEndPoint);
            Assert.Equal(listener.EndPoint, connection.LocalEndPoint);
            try
            {
                ReadResult read = await connection.Transport.Input.ReadAsync().AsTask().DefaultTimeout();
                Assert.True(read.IsCompleted, "the input of a reset connection did not end");
            }
            catch (ConnectionResetException)
            {
                // The reset itself: an end too.
            }

            await connection.DisposeAsync().AsTask().DefaultTimeout();
        }
        finally
        {
            gate.Set();
            await listener.DisposeAsync().DefaultTimeout();
            if (factory is IAsyncDisposable disposable)
            {
                await disposable.DisposeAsync().AsTask().DefaultTimeout();
            }
        }
    }
}
