using System.Net.Sockets;
using KestrelProactor.Dispatching;
using static KestrelProactor.Interop.Windows.Interop;

namespace KestrelProactor.Iocp;

/// <summary>The IOCP backend: one <see cref="IocpDispatcher"/> (completion port and thread) per configured dispatcher.</summary>
internal sealed class IocpBackend : ProactorBackend
{
    private IocpBackend(IocpDispatcher[] dispatchers)
        : base(dispatchers)
    {
    }

    public override string Name => "iocp";

    public override string KernelVersion => Environment.OSVersion.VersionString;

    public override string FeatureSummary =>
        $"AcceptEx, skip-completion-port-on-success, zero-byte receives, batch={IocpDispatcher.MaxEntries}";

    public static new bool TryStart(ProactorBackendContext context, out ProactorBackend? backend, out string? reason, out Exception? exception)
    {
        backend = null;
        reason = null;
        exception = null;
        try
        {
            // AcceptEx is a provider extension: look it up through a socket (creating one also starts Winsock).
            using (var probe = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp))
            {
                if (!Winsock.TryLoadExtensions(probe.Handle, out int error))
                {
                    reason = $"AcceptEx is not available (WSAIoctl error {error})";
                    return false;
                }
            }

            int count = context.Options.DispatcherCount;
            var dispatchers = new IocpDispatcher[count];
            for (int i = 0; i < count; i++)
            {
                try
                {
                    dispatchers[i] = new IocpDispatcher(i, context);
                }
                catch
                {
                    // A dispatcher holds its pool from its construction (the memory-pool factory may be what threw):
                    // those built so far, never started, give theirs back.
                    ProactorDispatcher.ReleaseUnstarted(dispatchers.AsSpan(0, i));
                    throw;
                }
            }

            var tasks = dispatchers.Select(d => d.StartAsync()).ToArray();
            var started = new List<IocpDispatcher>();
            for (int i = 0; i < count; i++)
            {
                try
                {
                    tasks[i].GetAwaiter().GetResult();
                    started.Add(dispatchers[i]);
                }
                catch (Exception ex)
                {
                    // The first failure is the one reported; every later one is caught too, so the dispatchers that
                    // did start are all stopped below instead of left running.
                    exception ??= ex;
                }
            }

            if (exception is not null)
            {
                reason = $"completion port setup failed: {exception.Message}";
                foreach (IocpDispatcher dispatcher in started)
                {
                    dispatcher.StopAsync().GetAwaiter().GetResult();
                }

                return false;
            }

            backend = new IocpBackend(dispatchers);
            return true;
        }
        catch (Exception ex)
        {
            exception = ex;
            reason = $"IOCP setup failed: {ex.Message}";
            return false;
        }
    }
}
