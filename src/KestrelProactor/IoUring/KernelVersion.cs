using System.Runtime.InteropServices;
using static KestrelProactor.Interop.Linux.Interop;

namespace KestrelProactor.IoUring;

/// <summary>The running kernel's release, for features that the opcode probe cannot reveal (operation flags).</summary>
internal static unsafe class KernelVersion
{
    private static readonly Lazy<(string Release, int Major, int Minor)> s_current = new(Read);

    public static string Release => s_current.Value.Release;

    public static bool AtLeast(int major, int minor)
    {
        var (_, ma, mi) = s_current.Value;
        return ma > major || (ma == major && mi >= minor);
    }

    private static (string, int, int) Read()
    {
        Sys.utsname name;
        if (Sys.uname(&name) != 0)
        {
            return ("unknown", 0, 0);
        }

        string release = Marshal.PtrToStringUTF8((nint)name.release) ?? "unknown";
        string[] parts = release.Split('.', '-');
        int major = parts.Length > 0 && int.TryParse(parts[0], out int a) ? a : 0;
        int minor = parts.Length > 1 && int.TryParse(parts[1], out int b) ? b : 0;
        return (release, major, minor);
    }
}
