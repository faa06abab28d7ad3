namespace Virt.Devices.Tests.Support;

/// <summary>A device that records accesses and answers reads with a fixed pattern (offset in the low bits).</summary>
internal sealed class RecordingDevice(byte tag = 0xA0) : IPortIoDevice, IMmioDevice
{
    public List<(ulong Offset, byte[] Data, bool IsWrite)> Accesses { get; } = [];

    public void Read(ushort offset, Span<byte> data) => Read((ulong)offset, data);

    public void Write(ushort offset, ReadOnlySpan<byte> data) => Write((ulong)offset, data);

    public void Read(ulong offset, Span<byte> data)
    {
        for (int i = 0; i < data.Length; i++)
        {
            data[i] = (byte)(tag | ((int)(offset + (ulong)i) & 0x0F));
        }

        Accesses.Add((offset, data.ToArray(), false));
    }

    public void Write(ulong offset, ReadOnlySpan<byte> data) => Accesses.Add((offset, data.ToArray(), true));
}

/// <summary>A device with a bug: every access throws.</summary>
internal sealed class ThrowingDevice : IPortIoDevice, IMmioDevice
{
    public void Read(ushort offset, Span<byte> data)
    {
        data.Clear();
        throw new InvalidOperationException("device bug on read");
    }

    public void Write(ushort offset, ReadOnlySpan<byte> data) => throw new InvalidOperationException("device bug on write");

    public void Read(ulong offset, Span<byte> data) => Read((ushort)offset, data);

    public void Write(ulong offset, ReadOnlySpan<byte> data) => Write((ushort)offset, data);
}
