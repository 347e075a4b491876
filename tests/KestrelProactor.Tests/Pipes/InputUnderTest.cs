using System.Buffers;
using System.IO.Pipelines;
using KestrelProactor.Internal;
using KestrelProactor.Tests.Contract;

namespace KestrelProactor.Tests.Pipes;

/// <summary>The PipeReader implementations the conformance tests run against.</summary>
public enum InputMode
{
    /// <summary>System.IO.Pipelines' Pipe: the reference. A test that fails here has a wrong expectation.</summary>
    Pipe,

    /// <summary>The transport's input, every receive lent as it is (no copy).</summary>
    Lent,

    /// <summary>The transport's input, every receive copied into the tail's free room and pool blocks.</summary>
    Copy,

    /// <summary>The transport's input with the connection's policy: large receives lent up to a cap, the rest copied.</summary>
    Mixed,
}

/// <summary>What the writer side was told after one append.</summary>
public enum Appended
{
    Continue,
    Pause,
    ReaderCompleted,
}

/// <summary>
/// One PipeReader with a writer side a test drives directly, one receive per <see cref="Append"/>. For the input,
/// a fake lender hands out real memory (it is the input's collaborator, not what is tested); resumes are queued on
/// a scheduler the test runs (<see cref="RunScheduled"/>), where the transport runs them on its dispatcher.
/// </summary>
public abstract class InputUnderTest : IDisposable
{
    protected InputUnderTest(ManualScheduler scheduler) => Scheduler = scheduler;

    public ManualScheduler Scheduler { get; }

    public abstract PipeReader Reader { get; }

    private int _resumes;

    /// <summary>How many times the writer was let go after a pause (once the scheduler ran).</summary>
    public int Resumes => Volatile.Read(ref _resumes);

    /// <summary>Released once per resume, for a writer on another thread.</summary>
    public SemaphoreSlim ResumeSignal { get; } = new(0);

    /// <summary>The exception the writer learned the reader completed with, if it learned of one.</summary>
    public Exception? ReaderErrorSeen { get; protected set; }

    public static InputUnderTest Create(InputMode mode, long pauseThreshold = 0, PipeScheduler? writerScheduler = null)
        => mode == InputMode.Pipe
            ? new PipeUnderTest(pauseThreshold, writerScheduler)
            : new ProactorInputUnderTest(mode, pauseThreshold, writerScheduler);

    /// <summary>One receive's bytes.</summary>
    public abstract Appended Append(ReadOnlySpan<byte> data);

    public abstract void CompleteWriter(Exception? error = null);

    /// <summary>Runs the work scheduled so far (resumes), as the dispatcher would on its next pass.</summary>
    public void RunScheduled() => Scheduler.RunAll();

    protected void OnResumed()
    {
        Interlocked.Increment(ref _resumes);
        ResumeSignal.Release();
    }

    public virtual void Dispose() => ResumeSignal.Dispose();

    public override string ToString() => GetType().Name;
}

/// <summary>A PipeScheduler whose work waits until the test runs it; with <c>inline: true</c> it runs at once.</summary>
public sealed class ManualScheduler(bool inline = false) : PipeScheduler
{
    private readonly Queue<(Action<object?> Action, object? State)> _queue = new();
    private readonly Lock _gate = new();

    public int Pending
    {
        get
        {
            lock (_gate)
            {
                return _queue.Count;
            }
        }
    }

    public override void Schedule(Action<object?> action, object? state)
    {
        if (inline)
        {
            action(state);
            return;
        }

        lock (_gate)
        {
            _queue.Enqueue((action, state));
        }
    }

    public void RunAll()
    {
        while (true)
        {
            (Action<object?> Action, object? State) item;
            lock (_gate)
            {
                if (!_queue.TryDequeue(out item))
                {
                    return;
                }
            }

            item.Action(item.State);
        }
    }
}

/// <summary>System.IO.Pipelines' Pipe, written and flushed once per append, as Kestrel's socket transport does.</summary>
internal sealed class PipeUnderTest : InputUnderTest
{
    private readonly Pipe _pipe;
    private ValueTask<FlushResult> _pendingFlush;
    private volatile bool _flushPending;

    public PipeUnderTest(long pauseThreshold, PipeScheduler? writerScheduler)
        : base(writerScheduler as ManualScheduler ?? new ManualScheduler())
    {
        _pipe = new Pipe(new PipeOptions(
            new TrackingMemoryPool(),
            readerScheduler: PipeScheduler.Inline,
            writerScheduler: writerScheduler ?? Scheduler,
            pauseWriterThreshold: pauseThreshold,
            resumeWriterThreshold: pauseThreshold / 2,
            useSynchronizationContext: false));
    }

    public override PipeReader Reader => _pipe.Reader;

    public override Appended Append(ReadOnlySpan<byte> data)
    {
        Assert.False(_flushPending, "The test appended while the writer was paused.");
        _pipe.Writer.Write(data);
        ValueTask<FlushResult> flush;
        try
        {
            flush = _pipe.Writer.FlushAsync();
        }
        catch (Exception ex)
        {
            ReaderErrorSeen = ex;
            return Appended.ReaderCompleted;
        }

        if (!flush.IsCompleted)
        {
            _flushPending = true;
            _pendingFlush = flush;
            flush.GetAwaiter().UnsafeOnCompleted(OnFlushCompleted);
            return Appended.Pause;
        }

        return Observe(flush);
    }

    public override void CompleteWriter(Exception? error = null) => _pipe.Writer.Complete(error);

    private void OnFlushCompleted()
    {
        Observe(_pendingFlush);
        _flushPending = false;
        OnResumed();
    }

    private Appended Observe(ValueTask<FlushResult> flush)
    {
        try
        {
            return flush.GetAwaiter().GetResult().IsCompleted ? Appended.ReaderCompleted : Appended.Continue;
        }
        catch (Exception ex)
        {
            ReaderErrorSeen = ex;
            return Appended.ReaderCompleted;
        }
    }
}

/// <summary>The transport's input, driven as the connection drives it, with a fake lender of real memory.</summary>
internal sealed class ProactorInputUnderTest : InputUnderTest
{
    /// <summary>The smallest ReceiveBufferSize the options allow, so that small tests already span buffers.</summary>
    public const int BufferSize = 512;

    /// <summary>In <see cref="InputMode.Mixed"/>, the connection's cap on lent buffers (it copies past it).</summary>
    public const int LentCap = 4;

    private readonly InputMode _mode;

    public ProactorInputUnderTest(InputMode mode, long pauseThreshold, PipeScheduler? writerScheduler, int bufferCount = 4096)
        : base(writerScheduler as ManualScheduler ?? new ManualScheduler())
    {
        _mode = mode;
        Lender = new FakeLender(bufferCount, BufferSize);
        Pool = new TrackingMemoryPool();
        Input = new ProactorInputPipe(Lender, Pool, writerScheduler ?? Scheduler, inlineContinuations: true, pauseThreshold, OnResume);
    }

    public ProactorInputPipe Input { get; }

    public FakeLender Lender { get; }

    public TrackingMemoryPool Pool { get; }

    public override PipeReader Reader => Input;

    public override Appended Append(ReadOnlySpan<byte> data)
    {
        // The kernel fills at most one buffer per receive: a larger append is several receives, as on the wire.
        Appended result = Appended.Continue;
        while (!data.IsEmpty)
        {
            int length = Math.Min(data.Length, BufferSize);
            Appended one = AppendOne(data[..length]);
            data = data[length..];
            if (one == Appended.ReaderCompleted)
            {
                return one;
            }

            if (one == Appended.Pause)
            {
                result = Appended.Pause;
            }
        }

        return result;
    }

    private Appended AppendOne(ReadOnlySpan<byte> data)
    {
        ProactorInputPipe.AppendResult appended;
        if (_mode == InputMode.Copy)
        {
            appended = Input.AppendCopy(data);
        }
        else
        {
            int bufferId = Lender.Receive(data);
            bool taken;
            if (_mode == InputMode.Lent)
            {
                appended = Input.Append(bufferId, data.Length);
                taken = appended != ProactorInputPipe.AppendResult.ReaderCompleted;
            }
            else
            {
                bool mayLend = Input.LentCount < LentCap;
                appended = Input.AppendReceived(Lender.GetMemory(bufferId).Span[..data.Length], mayLend ? bufferId : -1, out taken);
            }

            if (!taken)
            {
                // As the backend does with a buffer the connection did not take: straight back to the kernel.
                Lender.Return(bufferId);
            }
        }

        return appended switch
        {
            ProactorInputPipe.AppendResult.Pause => Appended.Pause,
            ProactorInputPipe.AppendResult.ReaderCompleted => SeeReaderCompleted(),
            _ => Appended.Continue,
        };
    }

    private Appended SeeReaderCompleted()
    {
        ReaderErrorSeen = Input.ReaderError;
        return Appended.ReaderCompleted;
    }

    public override void CompleteWriter(Exception? error = null) => Input.CompleteWriter(error);

    private void OnResume()
    {
        if (Input.IsReaderCompleted)
        {
            ReaderErrorSeen = Input.ReaderError;
        }

        OnResumed();
    }

    public override string ToString() => $"Input.{_mode}";
}

/// <summary>
/// Receive buffers of real memory, as a buffer ring lends them. A buffer given back is poisoned, so a reader that
/// still read it would see the poison; a buffer given back twice, or never lent, is recorded as an error.
/// </summary>
internal sealed class FakeLender(int count, int size) : IReceiveBufferLender
{
    public const byte Poison = 0xDD;

    private readonly byte[][] _buffers = Enumerable.Range(0, count).Select(_ => new byte[size]).ToArray();
    private readonly bool[] _lent = new bool[count];
    private readonly Stack<int> _free = new(Enumerable.Range(0, count).Reverse());
    private readonly List<string> _errors = [];
    private readonly Lock _gate = new();

    public bool ShouldCopy { get; set; }

    public int Outstanding
    {
        get
        {
            lock (_gate)
            {
                return _lent.Count(l => l);
            }
        }
    }

    public IReadOnlyList<string> Errors
    {
        get
        {
            lock (_gate)
            {
                return [.. _errors];
            }
        }
    }

    /// <summary>A receive: the kernel picks a free buffer and fills it.</summary>
    public int Receive(ReadOnlySpan<byte> data)
    {
        lock (_gate)
        {
            Assert.True(_free.Count > 0, "The fake lender ran out of buffers.");
            int id = _free.Pop();
            _lent[id] = true;
            data.CopyTo(_buffers[id]);
            return id;
        }
    }

    public Memory<byte> GetMemory(int bufferId) => _buffers[bufferId];

    public int BufferSize => size;

    public void Return(int bufferId)
    {
        lock (_gate)
        {
            if (!_lent[bufferId])
            {
                _errors.Add($"Buffer {bufferId} was returned without being lent.");
                return;
            }

            _lent[bufferId] = false;
            _buffers[bufferId].AsSpan().Fill(Poison);
            _free.Push(bufferId);
        }
    }
}
