using System.Net;
using KestrelProactor.Dispatching;
using Microsoft.AspNetCore.Connections;
using Microsoft.Extensions.Logging;

namespace KestrelProactor.Internal;

internal static class ProactorConnectionListener
{
    public static IConnectionListener Bind(ProactorBackend backend, EndPoint endpoint, ProactorTransportOptions options, ILogger logger)
        => throw new NotImplementedException();
}
