using Virt.Devices;

namespace Virt.Sdk.Tests.Snapshots;

/// <summary>
/// A one-byte port a guest polls: it reads 1 when the gate is open, else 0, and <see cref="Polled"/> completes once the
/// guest has read it <paramref name="pollsToReport"/> times (the guest is then well inside its loop).
/// </summary>
internal sealed class PollGate(bool open, int pollsToReport) : IPortIoDevice
{
    private int _reads;

    public TaskCompletionSource Polled { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

    /// <summary>How many times the guest read the gate.</summary>
    public int Reads => Volatile.Read(ref _reads);

    public void Read(ushort offset, Span<byte> data)
    {
        data.Clear();
        data[0] = open ? (byte)1 : (byte)0;
        if (Interlocked.Increment(ref _reads) == pollsToReport)
        {
            Polled.TrySetResult();
        }
    }

    public void Write(ushort offset, ReadOnlySpan<byte> data)
    {
    }
}
