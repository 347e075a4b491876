using System.Runtime.InteropServices;
using static KestrelProactor.Interop.Windows.Interop;

namespace KestrelProactor.Iocp;

/// <summary>Owns one I/O completion port; nothing else closes it.</summary>
internal sealed class SafeCompletionPortHandle : SafeHandle
{
    public SafeCompletionPortHandle() : base(invalidHandleValue: 0, ownsHandle: true)
    {
    }

    public override bool IsInvalid => handle == 0 || handle == -1;

    public static SafeCompletionPortHandle Create()
    {
        var port = new SafeCompletionPortHandle();
        // INVALID_HANDLE_VALUE with no existing port: a new port. One dispatcher thread dequeues from it.
        nint value = Kernel32.CreateIoCompletionPort(-1, 0, 0, 1);
        if (value == 0)
        {
            int error = Marshal.GetLastPInvokeError();
            port.SetHandleAsInvalid();
            throw new IocpException($"CreateIoCompletionPort failed: Win32 error {error}", error);
        }

        port.SetHandle(value);
        return port;
    }

    protected override bool ReleaseHandle() => Kernel32.CloseHandle(handle);
}
