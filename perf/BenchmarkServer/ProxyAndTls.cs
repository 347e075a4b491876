using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Yarp.ReverseProxy.Configuration;
using Yarp.ReverseProxy.Transforms;

namespace KestrelProactor.Perf;

/// <summary>The https and proxy scenarios' parts of the server: a certificate made at start, and a reverse proxy.</summary>
internal static class ProxyAndTls
{
    /// <summary>
    /// A self-signed certificate for 127.0.0.1 and localhost, made fresh at every start so nothing secret is kept in
    /// the repository. ECDSA P-256, as most TLS servers use today; the load generator does not verify it.
    /// </summary>
    public static X509Certificate2 CreateSelfSignedCertificate()
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest("CN=localhost", key, HashAlgorithmName.SHA256);
        var names = new SubjectAlternativeNameBuilder();
        names.AddDnsName("localhost");
        names.AddIpAddress(System.Net.IPAddress.Loopback);
        request.CertificateExtensions.Add(names.Build());
        request.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension([new Oid("1.3.6.1.5.5.7.3.1")], critical: false));
        using var ephemeral = request.CreateSelfSigned(DateTimeOffset.UtcNow.AddDays(-1), DateTimeOffset.UtcNow.AddDays(7));
        // Round-trip through PKCS#12 so the private key is a plain, exportable one TLS can use on every platform.
        return X509CertificateLoader.LoadPkcs12(ephemeral.Export(X509ContentType.Pkcs12), password: null);
    }

    /// <summary>Routes /proxy/{rest} to http://127.0.0.1:<paramref name="backendPort"/>/{rest} with the proxy's defaults.</summary>
    public static void AddProxy(IServiceCollection services, int backendPort)
    {
        var route = new RouteConfig
        {
            RouteId = "backend",
            ClusterId = "backend",
            Match = new RouteMatch { Path = "/proxy/{**rest}" },
        }.WithTransformPathRemovePrefix("/proxy");
        var cluster = new ClusterConfig
        {
            ClusterId = "backend",
            Destinations = new Dictionary<string, DestinationConfig>
            {
                ["backend"] = new() { Address = $"http://127.0.0.1:{backendPort}" },
            },
        };
        services.AddReverseProxy().LoadFromMemory([route], [cluster]);
    }
}
