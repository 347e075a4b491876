using System.Runtime.InteropServices;

namespace KestrelProactor.Interop.Linux;

internal static unsafe partial class Interop
{
    internal static partial class Sys
    {
        // A cpu_set_t of CPU_SETSIZE (1024) bits: what glibc's own mask holds.
        private const int CpuSetBytes = 1024 / 8;

        [LibraryImport(Libc, SetLastError = true)]
        private static partial int sched_getaffinity(int pid, nuint cpusetsize, byte* mask);

        [LibraryImport(Libc, SetLastError = true)]
        private static partial int sched_setaffinity(int pid, nuint cpusetsize, byte* mask);

        [LibraryImport(Libc)]
        public static partial int gettid();

        /// <summary>The CPUs the calling thread may run on, in ascending order; empty with <paramref name="errno"/> set on failure.</summary>
        public static List<int> GetThreadCpus(out int errno)
        {
            byte* mask = stackalloc byte[CpuSetBytes];
            new Span<byte>(mask, CpuSetBytes).Clear();
            var cpus = new List<int>();
            if (sched_getaffinity(0, CpuSetBytes, mask) != 0)
            {
                errno = Marshal.GetLastPInvokeError();
                return cpus;
            }

            errno = 0;
            for (int cpu = 0; cpu < CpuSetBytes * 8; cpu++)
            {
                if ((mask[cpu / 8] & (1 << (cpu % 8))) != 0)
                {
                    cpus.Add(cpu);
                }
            }

            return cpus;
        }

        /// <summary>Restricts the calling thread to <paramref name="cpu"/>; 0, or the errno.</summary>
        public static int SetThreadCpu(int cpu)
        {
            if ((uint)cpu >= CpuSetBytes * 8)
            {
                return Errno.EINVAL;
            }

            byte* mask = stackalloc byte[CpuSetBytes];
            new Span<byte>(mask, CpuSetBytes).Clear();
            mask[cpu / 8] = (byte)(1 << (cpu % 8));
            return sched_setaffinity(0, CpuSetBytes, mask) == 0 ? 0 : Marshal.GetLastPInvokeError();
        }
    }
}
