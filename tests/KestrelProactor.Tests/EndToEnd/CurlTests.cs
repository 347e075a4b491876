using System.Diagnostics;
using KestrelProactor.Tests.Infrastructure;
using Microsoft.AspNetCore.Server.Kestrel.Core;

namespace KestrelProactor.Tests.EndToEnd;

/// <summary>A client that is not .NET's: curl over HTTP/1.1 (chunked upload), h2c prior knowledge, and h2 over TLS.</summary>
public sealed class CurlTests
{
    private const string Curl = "/usr/bin/curl";

    [Theory]
    [MemberData(nameof(TransportMatrix.All), MemberType = typeof(TransportMatrix))]
    public async Task Curl_Http11ChunkedUpload_ChecksumMatches(TransportKind kind, TransportEndpoint endpoint)
    {
        Assert.SkipWhen(OperatingSystem.IsWindows(), "curl is a Linux binary; a Windows build (under Wine) cannot start it.");
        Assert.SkipUnless(File.Exists(Curl), "curl is not installed.");
        await using var server = await E2EServer.StartAsync(kind, endpoint);
        string file = WritePatternFile(2 * 1024 * 1024 + 3, seed: 31);
        try
        {
            var (exitCode, output) = await RunCurlAsync(
                server, "-sS", "--http1.1", "-D", "-", "-H", "Transfer-Encoding: chunked", "--data-binary", "@" + file,
                new Uri(server.BaseAddress, "/sha256").ToString());

            Assert.Equal(0, exitCode);
            Assert.Contains("HTTP/1.1 200", output);
            Assert.Contains($"{E2EApp.TransportHeader}: {server.ExpectedTransport}", output, StringComparison.OrdinalIgnoreCase);
            Assert.Contains(PatternData.Sha256Hex(2 * 1024 * 1024 + 3, 31), output);
            Assert.Contains("\"chunked\":true", output);
        }
        finally
        {
            File.Delete(file);
        }
    }

    [Theory]
    [MemberData(nameof(TransportMatrix.All), MemberType = typeof(TransportMatrix))]
    public async Task Curl_H2cPriorKnowledge_ServesHttp2(TransportKind kind, TransportEndpoint endpoint)
    {
        Assert.SkipWhen(OperatingSystem.IsWindows(), "curl is a Linux binary; a Windows build (under Wine) cannot start it.");
        Assert.SkipUnless(File.Exists(Curl), "curl is not installed.");
        await using var server = await E2EServer.StartAsync(kind, endpoint, listen: o => o.Protocols = HttpProtocols.Http2);

        var (exitCode, output) = await RunCurlAsync(server, "-sS", "--http2-prior-knowledge", "-D", "-", new Uri(server.BaseAddress, "/hello").ToString());

        Assert.Equal(0, exitCode);
        Assert.Contains("HTTP/2 200", output);
        Assert.Contains($"{E2EApp.TransportHeader}: {server.ExpectedTransport}", output, StringComparison.OrdinalIgnoreCase);
        Assert.EndsWith("Hello from KestrelProactor", output.TrimEnd());
    }

    [Theory]
    [MemberData(nameof(TransportMatrix.All), MemberType = typeof(TransportMatrix))]
    public async Task Curl_HttpsWithAlpn_NegotiatesHttp2(TransportKind kind, TransportEndpoint endpoint)
    {
        Assert.SkipWhen(OperatingSystem.IsWindows(), "curl is a Linux binary; a Windows build (under Wine) cannot start it.");
        Assert.SkipUnless(File.Exists(Curl), "curl is not installed.");
        await using var server = await E2EServer.StartAsync(kind, endpoint, listen: o =>
        {
            o.Protocols = HttpProtocols.Http1AndHttp2;
            o.UseHttps(TestCertificate.Certificate);
        });

        // -k: the certificate is self-signed; the .NET tests pin it exactly, this one is about curl's ALPN.
        var (exitCode, output) = await RunCurlAsync(server, "-sS", "-k", "--http2", "-D", "-", new Uri(server.BaseAddress, "/hello").ToString());

        Assert.Equal(0, exitCode);
        Assert.Contains("HTTP/2 200", output);
        Assert.Contains($"{E2EApp.TransportHeader}: {server.ExpectedTransport}", output, StringComparison.OrdinalIgnoreCase);
    }

    private static string WritePatternFile(int length, int seed)
    {
        string path = Path.Combine(Path.GetTempPath(), $"kestrel-proactor-{Guid.NewGuid():N}.bin");
        File.WriteAllBytes(path, PatternData.Create(length, seed));
        return path;
    }

    private static async Task<(int ExitCode, string Output)> RunCurlAsync(E2EServer server, params string[] arguments)
    {
        var startInfo = new ProcessStartInfo(Curl)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        startInfo.ArgumentList.Add("--max-time");
        startInfo.ArgumentList.Add("30");
        foreach (string argument in server.CurlEndPointArguments.Concat(arguments))
        {
            startInfo.ArgumentList.Add(argument);
        }

        using var process = Process.Start(startInfo)!;
        try
        {
            var stdout = process.StandardOutput.ReadToEndAsync(TestContext.Current.CancellationToken);
            var stderr = process.StandardError.ReadToEndAsync(TestContext.Current.CancellationToken);
            await process.WaitForExitAsync(TestContext.Current.CancellationToken).LongTimeout();
            return (process.ExitCode, await stdout.DefaultTimeout() + await stderr.DefaultTimeout());
        }
        finally
        {
            if (!process.HasExited)
            {
                process.Kill();
            }
        }
    }
}
