using System.Net;
using System.Net.Sockets;
using KestrelProactor.Dispatching;
using KestrelProactor.Internal;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Server.Kestrel.Transport.Sockets;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Options;
using System.Diagnostics.Metrics;

namespace KestrelProactor;

/// <summary>
/// Binds Kestrel endpoints with the proactor transport. The dispatchers (one ring or completion port and one
/// thread each) are started at the first bind and shared by every listener of this factory.
/// </summary>
public sealed class ProactorTransportFactory : IConnectionListenerFactory, IConnectionListenerFactorySelector, IAsyncDisposable
{
    private readonly ProactorTransportOptions _options;
    private readonly ILoggerFactory _loggerFactory;
    private readonly ILogger _logger;
    private readonly IMemoryPoolFactory<byte>? _memoryPoolFactory;
    private readonly IServiceProvider? _services;
    private readonly ProactorMetrics _metrics;
    private readonly Lock _gate = new();
    private ProactorBackend? _backend;
    private string? _unavailableReason;
    private Exception? _unavailableException;
    private SocketTransportFactory? _socketFactory;
    private bool _disposed;

    /// <summary>Creates the factory with the given options and logger factory.</summary>
    public ProactorTransportFactory(IOptions<ProactorTransportOptions> options, ILoggerFactory loggerFactory)
        : this(options, loggerFactory, memoryPoolFactory: null, meterFactory: null)
    {
    }

    /// <summary>Creates the factory with Kestrel's memory pool factory and a meter factory for its metrics.</summary>
    public ProactorTransportFactory(
        IOptions<ProactorTransportOptions> options,
        ILoggerFactory loggerFactory,
        IMemoryPoolFactory<byte>? memoryPoolFactory,
        IMeterFactory? meterFactory)
        : this(options, loggerFactory, memoryPoolFactory, meterFactory, services: null)
    {
    }

    /// <summary>
    /// Creates the factory as dependency injection does: with the host's services, so a fallback binds with the
    /// socket transport the host registered (built with Kestrel's own memory pool).
    /// </summary>
    public ProactorTransportFactory(
        IOptions<ProactorTransportOptions> options,
        ILoggerFactory loggerFactory,
        IMemoryPoolFactory<byte>? memoryPoolFactory,
        IMeterFactory? meterFactory,
        IServiceProvider? services)
    {
        _services = services;
        ArgumentNullException.ThrowIfNull(options);
        _options = options.Value;
        _loggerFactory = loggerFactory ?? NullLoggerFactory.Instance;
        _logger = _loggerFactory.CreateLogger("KestrelProactor");
        _memoryPoolFactory = memoryPoolFactory;
        _metrics = new ProactorMetrics(meterFactory);
    }

    /// <summary>The backend in use after the first bind: <c>"io_uring"</c>, <c>"iocp"</c>, or <c>"sockets"</c> when it fell back.</summary>
    public string? ActiveBackend { get; private set; }

    /// <summary>Why the native backend is not in use, when the factory fell back (or refused) at bind time.</summary>
    public string? FallbackReason => _unavailableReason;

    internal ProactorBackend? Backend => _backend;

    internal ProactorTransportOptions Options => _options;

    /// <inheritdoc />
    public bool CanBind(EndPoint endpoint) => endpoint switch
    {
        IPEndPoint => true,
        UnixDomainSocketEndPoint => true,
        FileHandleEndPoint => true,
        _ => false,
    };

    /// <inheritdoc />
    public async ValueTask<IConnectionListener> BindAsync(EndPoint endpoint, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(endpoint);
        if (!CanBind(endpoint))
        {
            throw new NotSupportedException($"{endpoint.GetType().Name} is not supported by the proactor transport.");
        }

        ProactorOptionsValidator.Validate(_options);

        ProactorBackend? backend = GetOrStartBackend();
        if (backend is null)
        {
            return await GetSocketFactory().BindAsync(endpoint, cancellationToken).ConfigureAwait(false);
        }

        return ProactorConnectionListener.Bind(backend, endpoint, _options, _logger);
    }

    private ProactorBackend? GetOrStartBackend()
    {
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (_backend is not null)
            {
                return _backend;
            }

            if (_unavailableReason is null)
            {
                var context = new ProactorBackendContext(_options, _logger, _metrics, CreateMemoryPool);
                if (ProactorBackend.TryStart(context, out _backend, out _unavailableReason, out _unavailableException))
                {
                    ActiveBackend = _backend!.Name;
                    ProactorLog.BackendStarted(_logger, _backend.Name, _backend.Dispatchers.Length, _backend.KernelVersion, _backend.FeatureSummary);
                    return _backend;
                }

                if (_options.AllowSocketTransportFallback)
                {
                    ProactorLog.FallingBackToSockets(_logger, _unavailableReason!, _unavailableException);
                }
            }

            if (!_options.AllowSocketTransportFallback)
            {
                throw new ProactorUnavailableException(_unavailableReason!, _unavailableException);
            }

            ActiveBackend = "sockets";
            return null;
        }
    }

    private System.Buffers.MemoryPool<byte> CreateMemoryPool()
        => _options.MemoryPoolFactory?.Invoke()
           ?? _memoryPoolFactory?.Create(new MemoryPoolOptions { Owner = "KestrelProactor" })
           ?? System.Buffers.MemoryPool<byte>.Shared;

    private SocketTransportFactory GetSocketFactory()
    {
        lock (_gate)
        {
            if (_socketFactory is not null)
            {
                return _socketFactory;
            }

            // The host's own socket transport (registered by UseKestrel) is built with Kestrel's memory pool
            // and the application's SocketTransportOptions: the same transport the site would run without us.
            _socketFactory = _services?.GetService(typeof(IEnumerable<IConnectionListenerFactory>)) is IEnumerable<IConnectionListenerFactory> registered
                ? registered.OfType<SocketTransportFactory>().FirstOrDefault()
                : null;
            return _socketFactory ??= new SocketTransportFactory(
                Microsoft.Extensions.Options.Options.Create(CreateFallbackSocketOptions(_options)),
                _loggerFactory);
        }
    }

    /// <summary>
    /// The socket transport's options for a fallback without a host-registered one: the proactor's counterparts,
    /// and its I/O queues from a dispatcher count only when one was set (unset, the socket transport's own default,
    /// not the proactor's, which is half the processors in the thread-pool mode).
    /// </summary>
    internal static SocketTransportOptions CreateFallbackSocketOptions(ProactorTransportOptions options)
    {
        var socketOptions = new SocketTransportOptions
        {
            Backlog = options.Backlog,
            NoDelay = options.NoDelay,
            MaxReadBufferSize = options.MaxReadBufferSize,
            MaxWriteBufferSize = options.MaxWriteBufferSize,
            UnsafePreferInlineScheduling = options.UnsafePreferInlineScheduling,
        };
        if (options.DispatcherCountIsSet)
        {
            socketOptions.IOQueueCount = Math.Min(options.DispatcherCount, 16);
        }

        return socketOptions;
    }

    /// <summary>Stops the dispatchers after every listener and connection of this factory is gone.</summary>
    public async ValueTask DisposeAsync()
    {
        ProactorBackend? backend;
        lock (_gate)
        {
            if (_disposed)
            {
                return;
            }

            _disposed = true;
            backend = _backend;
        }

        if (backend is not null)
        {
            await backend.DisposeAsync().ConfigureAwait(false);
        }

        _metrics.Dispose();
    }
}
