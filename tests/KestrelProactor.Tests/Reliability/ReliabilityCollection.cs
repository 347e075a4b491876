namespace KestrelProactor.Tests.Reliability;

/// <summary>
/// The reliability tests count the process's descriptors, threads and rings, which every other test also
/// changes: they run alone, after the parallel collections.
/// </summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class ReliabilityCollection
{
    public const string Name = "Reliability";
}
