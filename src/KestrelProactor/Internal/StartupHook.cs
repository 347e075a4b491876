using System.Reflection;
using System.Runtime.Loader;

/// <summary>
/// Makes this assembly loadable by name in an application that was built without it: naming this file in
/// <c>DOTNET_STARTUP_HOOKS</c> loads it before <c>Main</c>, and this hook answers the later
/// <c>Assembly.Load("KestrelProactor")</c> of <c>ASPNETCORE_HOSTINGSTARTUPASSEMBLIES</c>, which would otherwise
/// find nothing: the default load context only knows the assemblies listed in the application's deps.json, so a
/// copy dropped next to the application is not found either (docs/operations.md).
/// </summary>
/// <remarks>
/// The runtime looks for a type named <c>StartupHook</c> in the global namespace with a static, parameterless
/// <c>Initialize</c>; it may be internal. It touches no ASP.NET Core type, so it is safe to run before the host exists.
/// </remarks>
internal static class StartupHook
{
    internal static void Initialize()
    {
        Assembly self = typeof(StartupHook).Assembly;
        string name = self.GetName().Name!;
        AssemblyLoadContext.Default.Resolving += (_, requested) =>
            string.Equals(requested.Name, name, StringComparison.OrdinalIgnoreCase) ? self : null;
    }
}
