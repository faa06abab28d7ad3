using System.Buffers.Binary;

namespace Virt.Devices.Tests.Interrupts;

internal static class PortHelpers
{
    public static void Out(this IPortIoDevice d, ushort offset, byte value) => d.Write(offset, [value]);

    public static byte In(this IPortIoDevice d, ushort offset)
    {
        Span<byte> b = stackalloc byte[1];
        d.Read(offset, b);
        return b[0];
    }

    public static void Write32(this IMmioDevice d, ulong offset, uint value)
    {
        Span<byte> b = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32LittleEndian(b, value);
        d.Write(offset, b);
    }

    public static uint Read32(this IMmioDevice d, ulong offset)
    {
        Span<byte> b = stackalloc byte[4];
        d.Read(offset, b);
        return BinaryPrimitives.ReadUInt32LittleEndian(b);
    }

    /// <summary>An interrupt line that counts edges and remembers its level.</summary>
    public sealed class RecordingLine : IInterruptLine
    {
        public int Raises { get; private set; }
        public bool Level { get; private set; }

        public void Raise()
        {
            Raises++;
            Level = true;
        }

        public void Lower() => Level = false;
    }
}
