namespace KestrelProactor.Tests.Infrastructure;

/// <summary>
/// Test classes that set the dispatcher's static test hooks (<c>ProactorDispatcher.TestLoopHook</c> and the handler
/// hooks). One class's hook would replace another's, so they run one after the other; other tests run beside them.
/// </summary>
[CollectionDefinition(Name)]
public sealed class DispatcherHookCollection
{
    public const string Name = "Dispatcher test hooks";
}
