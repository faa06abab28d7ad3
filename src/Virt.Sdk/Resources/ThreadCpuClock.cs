using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace Virt.Resources;

/// <summary>
/// Reads how much CPU a vCPU thread used and how long it waited for a host CPU, from another thread. On Linux this is
/// <c>/proc/self/task/TID/schedstat</c> (nanoseconds on a CPU, nanoseconds runnable but waiting); elsewhere nothing is
/// known and callers fall back to wall time.
/// </summary>
internal sealed partial class ThreadCpuClock : IDisposable
{
    private readonly SafeFileHandle? _schedstat;
    private readonly byte[] _buffer = new byte[128];

    private ThreadCpuClock(SafeFileHandle? schedstat) => _schedstat = schedstat;

    /// <summary>Whether this clock reads the thread's own counters (otherwise <see cref="TryRead"/> always fails).</summary>
    public bool IsAvailable => _schedstat is not null;

    /// <summary>A clock for the calling thread.</summary>
    public static ThreadCpuClock ForCurrentThread()
    {
        if (!OperatingSystem.IsLinux())
        {
            return new ThreadCpuClock(null);
        }

        try
        {
            int tid = GetTid();
            return new ThreadCpuClock(File.OpenHandle($"/proc/self/task/{tid}/schedstat", FileMode.Open, FileAccess.Read));
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or EntryPointNotFoundException or DllNotFoundException)
        {
            return new ThreadCpuClock(null);
        }
    }

    /// <summary>Reads the thread's total time on a CPU and total time waiting for one, in nanoseconds.</summary>
    public bool TryRead(out long runNs, out long waitNs)
    {
        runNs = 0;
        waitNs = 0;
        if (_schedstat is null || _schedstat.IsClosed)
        {
            return false;
        }

        int n;
        try
        {
            n = RandomAccess.Read(_schedstat, _buffer, 0);
        }
        catch (IOException)
        {
            return false;
        }

        var text = _buffer.AsSpan(0, n);
        return TryParse(ref text, out runNs) && TryParse(ref text, out waitNs);
    }

    public void Dispose() => _schedstat?.Dispose();

    private static bool TryParse(ref Span<byte> text, out long value)
    {
        value = 0;
        int i = 0;
        while (i < text.Length && text[i] == (byte)' ')
        {
            i++;
        }

        int start = i;
        while (i < text.Length && text[i] is >= (byte)'0' and <= (byte)'9')
        {
            value = (value * 10) + (text[i] - '0');
            i++;
        }

        text = text[i..];
        return i > start;
    }

    [LibraryImport("libc", EntryPoint = "gettid")]
    private static partial int GetTid();
}
