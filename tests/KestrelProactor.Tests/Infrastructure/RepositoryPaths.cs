namespace KestrelProactor.Tests.Infrastructure;

/// <summary>Paths in the checkout the tests run from, and the build configuration they were built with.</summary>
internal static class RepositoryPaths
{
    /// <summary>The folder holding KestrelProactor.sln, found by walking up from the test assembly.</summary>
    public static string Root { get; } = FindRoot();

    /// <summary>"Debug" or "Release": the test assembly's own, so sibling outputs are looked up in the same layout.</summary>
    public static string Configuration { get; } =
        new DirectoryInfo(AppContext.BaseDirectory.TrimEnd(Path.DirectorySeparatorChar)).Parent!.Name;

    /// <summary>The target framework folder name of the test assembly (net10.0).</summary>
    public static string TargetFramework { get; } =
        new DirectoryInfo(AppContext.BaseDirectory.TrimEnd(Path.DirectorySeparatorChar)).Name;

    private static string FindRoot()
    {
        for (var directory = new DirectoryInfo(AppContext.BaseDirectory); directory is not null; directory = directory.Parent)
        {
            if (File.Exists(Path.Combine(directory.FullName, "KestrelProactor.sln")))
            {
                return directory.FullName;
            }
        }

        throw new InvalidOperationException($"No KestrelProactor.sln above {AppContext.BaseDirectory}.");
    }
}
