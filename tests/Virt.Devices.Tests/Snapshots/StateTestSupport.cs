using Virt.Devices.Interrupts;
using Virt.Snapshots;
using Xunit;

namespace Virt.Devices.Tests.Snapshots;

internal static class StateTestSupport
{
    public static byte[] Save(IPersistentState state)
    {
        var w = new StateWriter();
        state.SaveState(w);
        return w.WrittenMemory.ToArray();
    }

    public static void Restore(IPersistentState state, byte[] data, int? version = null)
    {
        var r = new StateReader(data, state.StateName);
        state.RestoreState(ref r, version ?? state.StateVersion);
    }

    /// <summary>Saves <paramref name="from"/> and restores the bytes into <paramref name="to"/>; returns the bytes.</summary>
    public static byte[] Copy(IPersistentState from, IPersistentState to)
    {
        byte[] data = Save(from);
        Restore(to, data);
        return data;
    }

    public static void AssertVersionRefused(IPersistentState state)
    {
        byte[] data = Save(state);
        var ex = Assert.Throws<SnapshotFormatException>(() => Restore(state, data, state.StateVersion + 1));
        Assert.Equal("version", ex.Field);
        Assert.Equal(state.StateName, ex.Section);
    }

    public static void InitialisePic(PicPair pic, byte masterBase = 0x20, byte slaveBase = 0x28)
    {
        var m = pic.MasterPorts;
        var s = pic.SlavePorts;
        m.Out(0, 0x11);
        m.Out(1, masterBase);
        m.Out(1, 0x04);
        m.Out(1, 0x01);
        s.Out(0, 0x11);
        s.Out(1, slaveBase);
        s.Out(1, 0x02);
        s.Out(1, 0x01);
        m.Out(1, 0x00);
        s.Out(1, 0x00);
    }

    public static void Out(this IPortIoDevice d, ushort offset, byte value) => d.Write(offset, [value]);

    public static byte In(this IPortIoDevice d, ushort offset)
    {
        Span<byte> b = stackalloc byte[1];
        d.Read(offset, b);
        return b[0];
    }

    public static void Write32(this IMmioDevice d, ulong offset, uint value) => d.Write(offset, BitConverter.GetBytes(value));

    public static uint Read32(this IMmioDevice d, ulong offset)
    {
        Span<byte> b = stackalloc byte[4];
        d.Read(offset, b);
        return BitConverter.ToUInt32(b);
    }

    public static void ProgramPin(IoApic io, int pin, ulong entry)
    {
        io.Write32(0x00, (uint)(0x10 + (2 * pin)));
        io.Write32(0x10, (uint)entry);
        io.Write32(0x00, (uint)(0x11 + (2 * pin)));
        io.Write32(0x10, (uint)(entry >> 32));
    }

    public static ulong ReadEntry(IoApic io, int pin)
    {
        io.Write32(0x00, (uint)(0x10 + (2 * pin)));
        ulong low = io.Read32(0x10);
        io.Write32(0x00, (uint)(0x11 + (2 * pin)));
        return low | ((ulong)io.Read32(0x10) << 32);
    }

    public sealed class Sink : IApicMessageSink
    {
        public List<ApicMessage> Messages { get; } = [];

        public void Deliver(in ApicMessage message) => Messages.Add(message);
    }
}
