using System.Runtime.InteropServices;

namespace KestrelProactor.Interop.Windows;

/// <summary>Completion ports and overlapped I/O (kernel32).</summary>
internal static unsafe partial class Interop
{
    internal static partial class Kernel32
    {
        private const string Library = "kernel32.dll";

        public const uint INFINITE = 0xFFFFFFFF;
        public const int ERROR_INVALID_HANDLE = 6;
        public const int ERROR_ABANDONED_WAIT_0 = 735;
        public const int ERROR_IO_PENDING = 997;
        public const int ERROR_NOT_FOUND = 1168;
        public const int WAIT_TIMEOUT = 258;
        public const byte FILE_SKIP_COMPLETION_PORT_ON_SUCCESS = 0x1;
        public const byte FILE_SKIP_SET_EVENT_ON_HANDLE = 0x2;

        /// <summary>32 bytes on x64. <c>Internal</c> holds the operation's NTSTATUS once it has completed.</summary>
        [StructLayout(LayoutKind.Sequential)]
        public struct OVERLAPPED
        {
            public nuint Internal;
            public nuint InternalHigh;
            public uint Offset;
            public uint OffsetHigh;
            public nint hEvent;
        }

        /// <summary>32 bytes on x64: one dequeued completion packet.</summary>
        [StructLayout(LayoutKind.Sequential)]
        public struct OVERLAPPED_ENTRY
        {
            public nuint lpCompletionKey;
            public OVERLAPPED* lpOverlapped;
            public nuint Internal;
            public uint dwNumberOfBytesTransferred;
        }

        [LibraryImport(Library, SetLastError = true)]
        public static partial nint CreateIoCompletionPort(nint fileHandle, nint existingCompletionPort, nuint completionKey, uint numberOfConcurrentThreads);

        [LibraryImport(Library, SetLastError = true)]
        [return: MarshalAs(UnmanagedType.Bool)]
        public static partial bool GetQueuedCompletionStatusEx(
            nint completionPort,
            OVERLAPPED_ENTRY* completionPortEntries,
            uint count,
            uint* numEntriesRemoved,
            uint milliseconds,
            [MarshalAs(UnmanagedType.Bool)] bool alertable);

        [LibraryImport(Library, SetLastError = true)]
        [return: MarshalAs(UnmanagedType.Bool)]
        public static partial bool PostQueuedCompletionStatus(nint completionPort, uint numberOfBytesTransferred, nuint completionKey, OVERLAPPED* overlapped);

        [LibraryImport(Library, SetLastError = true)]
        [return: MarshalAs(UnmanagedType.Bool)]
        public static partial bool CancelIoEx(nint handle, OVERLAPPED* overlapped);

        [LibraryImport(Library, SetLastError = true)]
        [return: MarshalAs(UnmanagedType.Bool)]
        public static partial bool SetFileCompletionNotificationModes(nint fileHandle, byte flags);

        [LibraryImport(Library, SetLastError = true)]
        [return: MarshalAs(UnmanagedType.Bool)]
        public static partial bool CloseHandle(nint handle);
    }
}
