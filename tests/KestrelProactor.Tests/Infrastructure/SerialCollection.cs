namespace KestrelProactor.Tests.Infrastructure;

/// <summary>
/// Tests that build and run whole applications as child processes (dotnet pack, dotnet build, a site started by
/// environment variables). They run alone, after the parallel tests, so their compiles on the two CI cores do not
/// skew the timing of the transport tests, and those do not slow them past their time-outs.
/// </summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class SerialCollection
{
    public const string Name = "Child processes, run alone";
}
