using System.Net;
using System.Net.Sockets;
using KestrelProactor.Tests.Infrastructure;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Connections.Features;
using Microsoft.AspNetCore.Http.Features;

namespace KestrelProactor.Tests.Contract;

/// <summary>Contract: a connection's endpoints, its feature collection, and the socket options set on accept.</summary>
public sealed class ConnectionFeatureTests
{
    [Theory]
    // Over TCP only: IP endpoints; a Unix socket's peer is unnamed on both sides.
    [MemberData(nameof(TransportMatrix.Presets), MemberType = typeof(TransportMatrix))]
    public async Task EndPoints_AcceptedConnection_MatchClientView(TransportKind kind)
    {
        // Arrange
        await using ListenerHarness harness = await ListenerHarness.BindAsync(kind);

        // Act
        (Socket client, ConnectionContext connection) = await harness.ConnectAndAcceptAsync();

        // Assert
        var local = Assert.IsType<IPEndPoint>(connection.LocalEndPoint);
        var remote = Assert.IsType<IPEndPoint>(connection.RemoteEndPoint);
        Assert.Equal(client.RemoteEndPoint, local);
        Assert.Equal(client.LocalEndPoint, remote);
    }

    [Theory]
    [MemberData(nameof(TransportMatrix.All), MemberType = typeof(TransportMatrix))]
    public async Task ConnectionId_TwoConnections_AreDistinctAndNonEmpty(TransportKind kind, TransportEndpoint endpoint)
    {
        // Arrange
        await using ListenerHarness harness = await ListenerHarness.BindAsync(kind, endpoint);

        // Act
        (_, ConnectionContext first) = await harness.ConnectAndAcceptAsync();
        (_, ConnectionContext second) = await harness.ConnectAndAcceptAsync();

        // Assert
        Assert.False(string.IsNullOrEmpty(first.ConnectionId));
        Assert.False(string.IsNullOrEmpty(second.ConnectionId));
        Assert.NotEqual(first.ConnectionId, second.ConnectionId);
    }

    [Theory]
    [MemberData(nameof(TransportMatrix.All), MemberType = typeof(TransportMatrix))]
    public async Task Features_AcceptedConnection_ExposeMemoryPool(TransportKind kind, TransportEndpoint endpoint)
    {
        // Arrange
        await using ListenerHarness harness = await ListenerHarness.BindAsync(kind, endpoint);

        // Act
        (_, ConnectionContext connection) = await harness.ConnectAndAcceptAsync();
        IMemoryPoolFeature? feature = connection.Features.Get<IMemoryPoolFeature>();

        // Assert
        Assert.NotNull(feature);
        Assert.NotNull(feature.MemoryPool);
    }

    [Theory]
    [MemberData(nameof(TransportMatrix.All), MemberType = typeof(TransportMatrix))]
    public async Task Features_SetArbitraryFeature_GetReturnsIt(TransportKind kind, TransportEndpoint endpoint)
    {
        // Arrange
        await using ListenerHarness harness = await ListenerHarness.BindAsync(kind, endpoint);
        (_, ConnectionContext connection) = await harness.ConnectAndAcceptAsync();
        var feature = new ApplicationFeature();

        // Act
        connection.Features.Set(feature);
        connection.Items["key"] = "value";

        // Assert
        Assert.Same(feature, connection.Features.Get<ApplicationFeature>());
        Assert.Equal("value", connection.Items["key"]);
    }

    [Theory]
    [MemberData(nameof(TransportMatrix.All), MemberType = typeof(TransportMatrix))]
    public async Task Features_ReplaceRemoveAndEnumerate_BehaveAsAFeatureCollection(TransportKind kind, TransportEndpoint endpoint)
    {
        // Arrange
        await using ListenerHarness harness = await ListenerHarness.BindAsync(kind, endpoint);
        (_, ConnectionContext connection) = await harness.ConnectAndAcceptAsync();
        IFeatureCollection features = connection.Features;
        var transport = new ReplacementTransportFeature();
        int revision = features.Revision;

        // Act: replace a feature the connection provides, remove another, add one of the application's.
        features.Set<IConnectionTransportFeature>(transport);
        features.Set<IConnectionItemsFeature>(null);
        features[typeof(ApplicationFeature)] = new ApplicationFeature();
        features[typeof(ApplicationFeature)] = null;
        var added = new ApplicationFeature();
        features.Set(added);

        // Assert
        Assert.Same(transport, features.Get<IConnectionTransportFeature>());
        Assert.Null(features.Get<IConnectionItemsFeature>());
        Assert.Same(added, features.Get<ApplicationFeature>());
        Assert.NotNull(features.Get<IConnectionIdFeature>());
        Assert.True(features.Revision > revision, "setting features did not change the revision");
        Assert.False(features.IsReadOnly);
        Dictionary<Type, object> listed = features.ToDictionary(pair => pair.Key, pair => pair.Value);
        Assert.Same(transport, listed[typeof(IConnectionTransportFeature)]);
        Assert.False(listed.ContainsKey(typeof(IConnectionItemsFeature)));
        Assert.Same(added, listed[typeof(ApplicationFeature)]);
        Assert.Same(features.Get<IConnectionIdFeature>(), listed[typeof(IConnectionIdFeature)]);
        Assert.Equal(features.Count(), listed.Count);
    }

    [Theory]
    [MemberData(nameof(TransportMatrix.All), MemberType = typeof(TransportMatrix))]
    public async Task Features_AcceptedConnection_ExposeTheSocket(TransportKind kind, TransportEndpoint endpoint)
    {
        // Arrange
        await using ListenerHarness harness = await ListenerHarness.BindAsync(kind, endpoint);

        // Act
        (_, ConnectionContext connection) = await harness.ConnectAndAcceptAsync();

        // Assert: the socket transport has a Socket object; the proactor exposes the descriptor and its backend.
        if (kind == TransportKind.Sockets)
        {
            IConnectionSocketFeature? socketFeature = connection.Features.Get<IConnectionSocketFeature>();
            Assert.NotNull(socketFeature);
            Assert.True(socketFeature.Socket.Connected);
        }
        else
        {
            IProactorConnectionFeature? proactorFeature = connection.Features.Get<IProactorConnectionFeature>();
            Assert.NotNull(proactorFeature);
            Assert.Equal(TransportFactories.ExpectedBackend, proactorFeature.Backend);
            Assert.InRange(proactorFeature.DispatcherId, 0, TransportFactories.CreateOptions(kind).DispatcherCount - 1);
            Assert.False(proactorFeature.SocketHandle.IsInvalid);
            Assert.False(proactorFeature.SocketHandle.IsClosed);
        }
    }

    [Theory]
    [MemberData(nameof(ContractTransports.KindsAndBooleans), MemberType = typeof(ContractTransports))]
    public async Task NoDelayOption_AcceptedConnection_SetsTcpNoDelayAccordingly(TransportKind kind, bool noDelay)
    {
        // Arrange
        await using ListenerHarness harness = await ListenerHarness.BindAsync(kind, configure: o => o.NoDelay = noDelay);

        // Act
        (_, ConnectionContext connection) = await harness.ConnectAndAcceptAsync();
        bool actual;
        if (kind == TransportKind.Sockets)
        {
            IConnectionSocketFeature? socketFeature = connection.Features.Get<IConnectionSocketFeature>();
            Assert.NotNull(socketFeature);
            actual = socketFeature.Socket.NoDelay;
        }
        else
        {
            IProactorConnectionFeature? proactorFeature = connection.Features.Get<IProactorConnectionFeature>();
            Assert.NotNull(proactorFeature);
            actual = SocketOptionReader.GetTcpNoDelay(proactorFeature.SocketHandle);
        }

        // Assert
        Assert.Equal(noDelay, actual);
    }

    private sealed class ApplicationFeature;

    private sealed class ReplacementTransportFeature : IConnectionTransportFeature
    {
        public System.IO.Pipelines.IDuplexPipe Transport { get; set; } = null!;
    }
}
