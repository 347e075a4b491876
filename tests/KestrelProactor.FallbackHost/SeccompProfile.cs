using System.Text.Json;
using static KestrelProactor.FallbackHost.Interop.Seccomp;

namespace KestrelProactor.FallbackHost;

/// <summary>
/// Compiles a container seccomp profile (the JSON that Docker's <c>--security-opt seccomp=</c> and a Kubernetes
/// <c>Localhost</c> profile take) into a filter and installs it on this process, so a test can run the host under
/// the profile the samples ship. It understands what that profile uses: a default action, and per-name actions
/// (<c>SCMP_ACT_ALLOW</c>, <c>SCMP_ACT_ERRNO</c> with <c>errnoRet</c>) with at most one <c>SCMP_CMP_MASKED_EQ</c> test
/// of a 32-bit argument. Anything else is refused, so a profile the host cannot check is never half-checked.
/// x86_64 only.
/// </summary>
internal static unsafe class SeccompProfile
{
    private const int EPERM = 1;

    public static void Install(string path, IReadOnlySet<string> dropped)
    {
        using JsonDocument document = JsonDocument.Parse(File.ReadAllText(path));
        JsonElement root = document.RootElement;
        int defaultErrno = root.TryGetProperty("defaultErrnoRet", out JsonElement e) ? e.GetInt32() : EPERM;
        uint defaultAction = Action(root.GetProperty("defaultAction").GetString()!, defaultErrno);

        var program = new List<sock_filter>
        {
            // Another architecture's calls (x32, i386) get the default action.
            new(BPF_LD_W_ABS, 0, 0, SeccompDataArch),
            new(BPF_JMP_JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
            new(BPF_RET_K, 0, 0, defaultAction),
            new(BPF_LD_W_ABS, 0, 0, SeccompDataNr),
        };

        foreach (JsonElement rule in root.GetProperty("syscalls").EnumerateArray())
        {
            int errno = rule.TryGetProperty("errnoRet", out JsonElement r) ? r.GetInt32() : defaultErrno;
            uint action = Action(rule.GetProperty("action").GetString()!, errno);
            JsonElement? argument = null;
            if (rule.TryGetProperty("args", out JsonElement args) && args.GetArrayLength() > 0)
            {
                if (args.GetArrayLength() != 1 || args[0].GetProperty("op").GetString() != "SCMP_CMP_MASKED_EQ" ||
                    args[0].GetProperty("value").GetUInt64() > uint.MaxValue)
                {
                    throw new NotSupportedException($"Only one 32-bit SCMP_CMP_MASKED_EQ argument test is supported: {rule}");
                }

                argument = args[0];
            }

            foreach (JsonElement name in rule.GetProperty("names").EnumerateArray())
            {
                string syscall = name.GetString()!;
                if (dropped.Contains(syscall))
                {
                    continue;
                }

                if (!SyscallNumbers.TryGet(syscall, out uint number))
                {
                    throw new NotSupportedException($"Unknown x86_64 system call '{syscall}' in {path}.");
                }

                if (argument is not JsonElement test)
                {
                    // Jump offsets count from the next instruction: on a match fall into the return, else skip it.
                    program.Add(new(BPF_JMP_JEQ_K, 0, 1, number));
                    program.Add(new(BPF_RET_K, 0, 0, action));
                    continue;
                }

                uint index = test.GetProperty("index").GetUInt32();
                uint mask = (uint)test.GetProperty("value").GetUInt64();
                uint expected = test.TryGetProperty("valueTwo", out JsonElement two) ? (uint)two.GetUInt64() : 0;
                // Not this call: skip the five instructions of the test. This call with a failing test: reload the
                // number for the rules that follow.
                program.Add(new(BPF_JMP_JEQ_K, 0, 5, number));
                program.Add(new(BPF_LD_W_ABS, 0, 0, SeccompDataArgs + (8 * index)));
                program.Add(new(BPF_ALU_AND_K, 0, 0, mask));
                program.Add(new(BPF_JMP_JEQ_K, 0, 1, expected));
                program.Add(new(BPF_RET_K, 0, 0, action));
                program.Add(new(BPF_LD_W_ABS, 0, 0, SeccompDataNr));
            }
        }

        program.Add(new(BPF_RET_K, 0, 0, defaultAction));
        sock_filter[] filter = program.ToArray();
        fixed (sock_filter* first = filter)
        {
            IoUringDenial.InstallFilter(first, filter.Length);
        }
    }

    private static uint Action(string action, int errno) => action switch
    {
        "SCMP_ACT_ALLOW" => SECCOMP_RET_ALLOW,
        "SCMP_ACT_ERRNO" => SECCOMP_RET_ERRNO | (uint)errno,
        _ => throw new NotSupportedException($"Unsupported seccomp action {action}."),
    };
}
