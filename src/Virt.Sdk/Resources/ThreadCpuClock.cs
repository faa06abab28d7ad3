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
    private readonly SafeFileHandle? _stat;
    private readonly byte[] _buffer = new byte[128];
    private readonly byte[] _statBuffer = new byte[1024];

    private ThreadCpuClock(SafeFileHandle? schedstat, SafeFileHandle? stat)
    {
        _schedstat = schedstat;
        _stat = stat;
    }

    /// <summary>Whether this clock reads the thread's own counters (otherwise <see cref="TryRead"/> always fails).</summary>
    public bool IsAvailable => _schedstat is not null;

    /// <summary>A clock for the calling thread.</summary>
    public static ThreadCpuClock ForCurrentThread()
    {
        if (!OperatingSystem.IsLinux())
        {
            return new ThreadCpuClock(null, null);
        }

        try
        {
            int tid = GetTid();
            return new ThreadCpuClock(
                File.OpenHandle($"/proc/self/task/{tid}/schedstat", FileMode.Open, FileAccess.Read),
                File.OpenHandle($"/proc/self/task/{tid}/stat", FileMode.Open, FileAccess.Read));
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or EntryPointNotFoundException or DllNotFoundException)
        {
            return new ThreadCpuClock(null, null);
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

    /// <summary>
    /// Whether the thread is asleep now (state S or D in <c>/proc/self/task/TID/stat</c>: blocked, e.g. a halted vCPU
    /// waiting for an interrupt), as opposed to running or waiting for a CPU (R). False when unknown.
    /// </summary>
    public bool IsSleeping()
    {
        if (_stat is null || _stat.IsClosed)
        {
            return false;
        }

        int n;
        try
        {
            n = RandomAccess.Read(_stat, _statBuffer, 0);
        }
        catch (IOException)
        {
            return false;
        }

        // "TID (COMM) S ...": the command may hold spaces and parentheses, so the state follows the last ')'.
        var text = _statBuffer.AsSpan(0, n);
        int close = text.LastIndexOf((byte)')');
        return close >= 0 && close + 2 < n && text[close + 2] is (byte)'S' or (byte)'D' or (byte)'I';
    }

    public void Dispose()
    {
        _schedstat?.Dispose();
        _stat?.Dispose();
    }

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
