using System.IO.Compression;
using System.Net;
using System.Xml.Linq;
using KestrelProactor.Tests.Infrastructure;

namespace KestrelProactor.Tests.Packaging;

/// <summary>
/// Packs the library as a release would, then builds and runs a fresh web application that references the package
/// from a local feed, as a user's project would: the package must restore, compile against its public API, and
/// serve over the proactor transport. Each run packs a version of its own into a private package folder, so a
/// package cached by an earlier run can never stand in for this one.
/// </summary>
[Collection(SerialCollection.Name)]
public sealed class PackageTests : IDisposable
{
    private static readonly TimeSpan BuildTimeout = TimeSpan.FromMinutes(4);
    private readonly DirectoryInfo _work = Directory.CreateTempSubdirectory("kestrelproactor-package-");
    private readonly string _version = $"0.0.0-test.{DateTime.UtcNow:yyyyMMddHHmmss}.{Environment.ProcessId}";

    private string Feed => Path.Combine(_work.FullName, "feed");

    private Dictionary<string, string?> ChildEnvironment => new()
    {
        // The app's restore finds only this run's package and leaves the user's package folder alone.
        ["NUGET_PACKAGES"] = Path.Combine(_work.FullName, "packages"),
    };

    public void Dispose()
    {
        try
        {
            _work.Delete(recursive: true);
        }
        catch (IOException)
        {
            // A child process still holds a file; the temp folder is cleaned by the system later.
        }
    }

    [Fact]
    public async Task Pack_ThenReferenceFromFreshWebApp_ServesOverProactor()
    {
        // Arrange: pack into the feed, outside the source tree's bin/obj. The pack restores from the usual package
        // folder, which the solution's own restore has filled.
        await ChildProcess.RunDotnetAsync(BuildTimeout, RepositoryPaths.Root, environment: null,
            "pack", Path.Combine(RepositoryPaths.Root, "src", "KestrelProactor", "KestrelProactor.csproj"),
            "-c", "Release", "-o", Feed, $"-p:Version={_version}",
            "--artifacts-path", Path.Combine(_work.FullName, "artifacts"), "-nodeReuse:false");
        string package = Path.Combine(Feed, $"KestrelProactor.{_version}.nupkg");
        AssertPackageContents(package);
        Assert.True(File.Exists(Path.ChangeExtension(package, ".snupkg")), "No symbol package next to the package.");

        string app = WriteApp();
        await ChildProcess.RunDotnetAsync(BuildTimeout, app, ChildEnvironment, "build", "-c", "Release", "-nodeReuse:false");

        // Act: run it with fallback off, so only the native backend can serve.
        var runEnvironment = new Dictionary<string, string?>(ChildEnvironment)
        {
            ["ASPNETCORE_URLS"] = "http://127.0.0.1:0",
            ["Kestrel__Proactor__AllowSocketTransportFallback"] = OperatingSystem.IsLinux() ? "false" : "true",
        };
        await using ChildProcess site = ChildProcess.Start(
            "dotnet", ["exec", Path.Combine(app, "bin", "Release", RepositoryPaths.TargetFramework, "PackageConsumer.dll")], app, runEnvironment);
        string listening = await site.WaitForLineAsync(l => l.StartsWith("LISTENING ", StringComparison.Ordinal), TestTimeouts.Long);
        using var client = new HttpClient { BaseAddress = new Uri(listening["LISTENING ".Length..].Trim()), Timeout = TestTimeouts.Default };
        using HttpResponseMessage response = await client.GetAsync("/", TestContext.Current.CancellationToken).DefaultTimeout();
        string backend = await response.Content.ReadAsStringAsync(TestContext.Current.CancellationToken).DefaultTimeout();
        await site.StopAsync(TestTimeouts.Long);

        // Assert
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.Equal(OperatingSystem.IsLinux() ? "io_uring" : "sockets", backend);
        Assert.Equal(0, site.ExitCode);
    }

    private static void AssertPackageContents(string package)
    {
        Assert.True(File.Exists(package), $"dotnet pack did not produce {package}.");
        using ZipArchive zip = ZipFile.OpenRead(package);
        string[] entries = zip.Entries.Select(e => e.FullName).ToArray();
        Assert.Contains("README.md", entries);
        Assert.Contains("lib/net10.0/KestrelProactor.dll", entries);
        Assert.Contains("lib/net10.0/KestrelProactor.xml", entries);

        using Stream nuspecStream = zip.Entries.Single(e => e.FullName.EndsWith(".nuspec", StringComparison.Ordinal)).Open();
        XElement metadata = XDocument.Load(nuspecStream).Root!.Elements().Single(e => e.Name.LocalName == "metadata");
        XElement Element(string name) => Assert.Single(metadata.Elements(), e => e.Name.LocalName == name);
        Assert.Equal("MIT", Element("license").Value);
        Assert.Equal("expression", Element("license").Attribute("type")?.Value);
        Assert.Equal("README.md", Element("readme").Value);
        Assert.Equal("git", Element("repository").Attribute("type")?.Value);
        Assert.False(string.IsNullOrEmpty(Element("description").Value));
        // The transport comes with the shared framework: no package dependencies, one framework reference.
        Assert.Contains("Microsoft.AspNetCore.App", Element("frameworkReferences").ToString());
        Assert.DoesNotContain(Element("dependencies").Descendants(), e => e.Name.LocalName == "dependency");
    }

    /// <summary>A user's project: a csproj, a Program.cs and a NuGet.config with the local feed and nuget.org.</summary>
    private string WriteApp()
    {
        string app = Path.Combine(_work.FullName, "app");
        Directory.CreateDirectory(app);
        File.WriteAllText(Path.Combine(app, "PackageConsumer.csproj"), $"""
            <Project Sdk="Microsoft.NET.Sdk.Web">
              <PropertyGroup>
                <TargetFramework>{RepositoryPaths.TargetFramework}</TargetFramework>
                <Nullable>enable</Nullable>
                <ImplicitUsings>enable</ImplicitUsings>
                <TreatWarningsAsErrors>true</TreatWarningsAsErrors>
              </PropertyGroup>
              <ItemGroup>
                <PackageReference Include="KestrelProactor" Version="{_version}" />
              </ItemGroup>
            </Project>
            """);
        File.WriteAllText(Path.Combine(app, "Program.cs"), """
            using KestrelProactor;
            using Microsoft.AspNetCore.Hosting.Server;
            using Microsoft.AspNetCore.Hosting.Server.Features;

            var builder = WebApplication.CreateBuilder(args);
            builder.WebHost.UseProactorTransport(builder.Configuration.GetSection(ProactorTransportOptions.ConfigurationSectionName));
            var app = builder.Build();
            app.MapGet("/", (HttpContext context) => context.Features.Get<IProactorConnectionFeature>()?.Backend ?? "sockets");
            app.Lifetime.ApplicationStarted.Register(() =>
                Console.WriteLine($"LISTENING {app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First()}"));
            app.Run();
            """);
        File.WriteAllText(Path.Combine(app, "NuGet.config"), $"""
            <?xml version="1.0" encoding="utf-8"?>
            <configuration>
              <packageSources>
                <clear />
                <add key="local" value="{Feed}" />
                <add key="nuget.org" value="https://api.nuget.org/v3/index.json" />
              </packageSources>
            </configuration>
            """);
        return app;
    }
}
