using Virt.Boot;
using Virt.Testing;
using static Iced.Intel.AssemblerRegisters;

namespace Virt.Cpu.Interpreter.Tests;

/// <summary>REP OUTS from MMIO and REP INS to MMIO: every element is an MMIO exit and a port exit, and the string finishes.</summary>
public sealed class StringIoMmioTests
{
    /// <summary>Past the end of the 4 MiB of RAM, inside the identity map: MMIO.</summary>
    private const ulong Mmio = 0x1000_0000;

    [Fact]
    public void Rep_outsb_from_mmio_moves_one_element_per_round_trip_to_the_end()
    {
        using var m = Machine.Long64(a =>
        {
            a.mov(edx, 0x80);
            a.mov(esi, (uint)Mmio);
            a.mov(ecx, 3);
            a.rep.outsb();
            a.hlt();
        });
        var port = new List<byte>();
        for (int guard = 0; guard < 20; guard++)
        {
            var exit = m.Run();
            if (exit.Reason == VcpuExitReason.Halt)
            {
                break;
            }

            if (exit.Reason == VcpuExitReason.Mmio)
            {
                Assert.False(exit.IsWrite);
                m.Vcpu.ExitData[0] = (byte)(0xA0 + (exit.Address.Value - Mmio));
                continue;
            }

            Assert.True(exit.Reason == VcpuExitReason.PortIo, exit.ToString());
            port.AddRange(m.Vcpu.ExitData.ToArray());
        }

        Assert.Equal(new byte[] { 0xA0, 0xA1, 0xA2 }, port.ToArray());
        var r = m.Regs;
        Assert.Equal((0UL, Mmio + 3), (r.Rcx, r.Rsi));
    }

    [Fact]
    public void Rep_insb_to_mmio_stores_one_element_per_round_trip_to_the_end()
    {
        using var m = Machine.Long64(a =>
        {
            a.mov(edx, 0x80);
            a.mov(edi, (uint)Mmio);
            a.mov(ecx, 3);
            a.rep.insb();
            a.hlt();
        });
        var stores = new List<(ulong, byte)>();
        byte next = 0x50;
        for (int guard = 0; guard < 20; guard++)
        {
            var exit = m.Run();
            if (exit.Reason == VcpuExitReason.Halt)
            {
                break;
            }

            if (exit.Reason == VcpuExitReason.Mmio)
            {
                Assert.True(exit.IsWrite);
                stores.Add((exit.Address.Value, m.Vcpu.ExitData[0]));
                continue;
            }

            Assert.True(exit.Reason == VcpuExitReason.PortIo, exit.ToString());
            m.Vcpu.ExitData[0] = next++;
        }

        Assert.Equal(new[] { (Mmio, (byte)0x50), (Mmio + 1, (byte)0x51), (Mmio + 2, (byte)0x52) }, stores.ToArray());
        var r = m.Regs;
        Assert.Equal((0UL, Mmio + 3), (r.Rcx, r.Rdi));
    }
}
