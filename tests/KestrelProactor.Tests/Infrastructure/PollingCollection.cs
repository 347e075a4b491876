namespace KestrelProactor.Tests.Infrastructure;

/// <summary>
/// Tests whose rings have a submission-polling thread (<c>IORING_SETUP_SQPOLL</c>). Those kernel threads spin after
/// every submission, so these tests run alone rather than take the two CI cores from timing-sensitive tests.
/// </summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class PollingCollection
{
    public const string Name = "Submission-polling rings, run alone";
}
