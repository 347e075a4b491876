using System.Reflection;
using System.Runtime.InteropServices;
using System.Text.RegularExpressions;
using KestrelProactor.IoUring;
using KestrelProactor.Tests.Infrastructure;
using static KestrelProactor.Interop.Linux.Interop;
using static KestrelProactor.Interop.Linux.Interop.IoUring;

namespace KestrelProactor.Tests.Operations;

/// <summary>
/// Each ring holds itself to the opcodes, SQE flags and register calls the transport uses
/// (<c>IORING_REGISTER_RESTRICTIONS</c> on a ring set up disabled): anything else completes with <c>-EACCES</c>.
/// </summary>
public sealed unsafe partial class RingRestrictionTests
{
    private const int AtCurrentDirectory = -100; // AT_FDCWD
    private const uint OpenReadOnlyCloseOnExec = 0x80000; // O_RDONLY | O_CLOEXEC

    [Fact]
    public void NewRing_IsRestricted_AllowsNop_RefusesOpenatAForeignFlagAndAForeignRegisterCall()
    {
        using IoUringRing ring = IoUringRing.Create(8, 16, [], new List<string>());
        Assert.True(ring.IsRestricted, ring.RestrictionsRefused);

        nint path = Marshal.StringToCoTaskMemUTF8("/dev/null");
        int nop, open, async;
        try
        {
            // One at a time: a refused entry ends the batch it is in (this ring has no SUBMIT_ALL).
            nop = SubmitOne(ring, static (sqe, _) => sqe->opcode = IORING_OP_NOP, 0);

            // Opening a file: an operation the transport never submits.
            open = SubmitOne(ring, static (sqe, path) =>
            {
                sqe->opcode = IORING_OP_OPENAT;
                sqe->fd = AtCurrentDirectory;
                sqe->addr = (ulong)path;
                sqe->op_flags = OpenReadOnlyCloseOnExec;
            }, path);

            // An allowed opcode with a flag the transport never sets (punt to the kernel's worker threads).
            async = SubmitOne(ring, static (sqe, _) =>
            {
                sqe->opcode = IORING_OP_NOP;
                sqe->flags = IOSQE_ASYNC;
            }, 0);
        }
        finally
        {
            Marshal.FreeCoTaskMem(path);
        }

        if (open >= 0)
        {
            Sys.close(open);
        }

        Assert.Equal(0, nop);
        Assert.Equal(-Errno.EACCES, open);
        Assert.Equal(-Errno.EACCES, async);

        // A register call the transport never makes (it would hand the ring this thread's credentials).
        Assert.Equal(-Errno.EACCES, ring.RegisterRaw(IORING_REGISTER_PERSONALITY, null, 0));
    }

    [Fact]
    public void AllowLists_CoverEverythingTheBackendUses()
    {
        // Reads the backend's sources: an opcode, SQE flag or register call added there without adding it to the
        // allow lists would complete with -EACCES on every ring, or quietly turn a feature off.
        string folder = Path.Combine(RepositoryPaths.Root, "src", "KestrelProactor", "IoUring");
        var opcodes = new SortedSet<string>();
        var flags = new SortedSet<string>();
        var registers = new SortedSet<string>();
        foreach (string file in Directory.GetFiles(folder, "*.cs").Where(f => !f.EndsWith("IoUringRing.Restrictions.cs", StringComparison.Ordinal)))
        {
            string source = File.ReadAllText(file);
            Collect(OpcodeAssignment(), source, opcodes);
            Collect(FlagsAssignment(), source, flags);
            Collect(RegisterCall(), source, registers);
        }

        // The scan found what the backend is known to use, so an empty result cannot pass for a clean one.
        Assert.Superset(new SortedSet<string> { "IORING_OP_ACCEPT", "IORING_OP_RECV", "IORING_OP_SEND_ZC", "IORING_OP_ASYNC_CANCEL" }, opcodes);
        Assert.Contains("IOSQE_BUFFER_SELECT", flags);
        Assert.Superset(new SortedSet<string> { "IORING_REGISTER_PROBE", "IORING_REGISTER_PBUF_RING", "IORING_UNREGISTER_RING_FDS" }, registers);

        byte[] allowedOperations = IoUringRing.AllowedOperations.ToArray();
        uint[] allowedRegisters = IoUringRing.AllowedRegisterOperations.ToArray();
        Assert.All(opcodes, name => Assert.Contains((byte)ValueOf(name), allowedOperations));
        Assert.All(flags, name => Assert.Equal((byte)ValueOf(name), (byte)(IoUringRing.AllowedSqeFlags & (byte)ValueOf(name))));
        Assert.All(registers, name => Assert.Contains((uint)ValueOf(name), allowedRegisters));
    }

    private delegate void Prepare(io_uring_sqe* sqe, nint argument);

    /// <summary>Submits one SQE and returns its completion's result.</summary>
    private static int SubmitOne(IoUringRing ring, Prepare prepare, nint argument)
    {
        io_uring_sqe* sqe = ring.TryGetSqe();
        Assert.True(sqe is not null);
        prepare(sqe, argument);
        sqe->user_data = 42;
        Assert.Equal(1, ring.SubmitAndWait(1));
        Assert.True(ring.TryPeekCompletion(0, out io_uring_cqe cqe));
        ring.AdvanceCompletions(1);
        Assert.Equal(42UL, cqe.user_data);
        return cqe.res;
    }

    private static void Collect(Regex statement, string source, SortedSet<string> names)
    {
        foreach (Match match in statement.Matches(source))
        {
            foreach (Match name in ConstantName().Matches(match.Value))
            {
                names.Add(name.Value);
            }
        }
    }

    private static long ValueOf(string constant)
    {
        FieldInfo? field = typeof(KestrelProactor.Interop.Linux.Interop.IoUring).GetField(constant, BindingFlags.Public | BindingFlags.Static);
        Assert.True(field is not null, $"{constant} is not an interop constant");
        return Convert.ToInt64(field.GetRawConstantValue());
    }

    /// <summary><c>sqe-&gt;opcode = ...;</c>, conditional expressions included.</summary>
    [GeneratedRegex(@"->opcode\s*=[^;]+;")]
    private static partial Regex OpcodeAssignment();

    /// <summary><c>sqe-&gt;flags = ...;</c> and <c>|=</c>.</summary>
    [GeneratedRegex(@"->flags\s*\|?=[^;]+;")]
    private static partial Regex FlagsAssignment();

    /// <summary>Every io_uring_register call: the raw syscall wrapper and the ring's helper.</summary>
    [GeneratedRegex(@"\bRegister(?:Raw)?\([^;]+;")]
    private static partial Regex RegisterCall();

    [GeneratedRegex(@"\b(?:IORING_OP|IOSQE|IORING_REGISTER|IORING_UNREGISTER)_[A-Z0-9_]+\b")]
    private static partial Regex ConstantName();
}
