using Virt.Boot;
using Virt.Testing;
using static Iced.Intel.AssemblerRegisters;

namespace Virt.Cpu.Interpreter.Tests;

/// <summary>
/// Code segments with a non-zero base and descriptor tables above 4 GiB: what Linux's real-mode restart
/// path (long mode → compatibility mode → 16-bit protected mode → real mode) depends on.
/// </summary>
public sealed class SegmentBaseTests
{
    public static TheoryData<string> Backends() => TestBackends.Both();

    private static IHypervisor Backend(string name) => TestBackends.Create(name);

    [Theory]
    [MemberData(nameof(Backends))]
    public void Real_mode_code_at_a_nonzero_segment_branches_calls_and_returns_by_offset(string backend)
    {
        using var m = new Machine(Backend(backend));
        const ushort segment = 0x1234;
        var code = GuestProgram.Assemble(16, 0, a =>
        {
            var loop = a.CreateLabel();
            var sub = a.CreateLabel();
            var done = a.CreateLabel();
            a.xor(ax, ax);
            a.xor(bx, bx);
            a.mov(cx, 5);
            a.Label(ref loop);
            a.inc(ax);
            a.call(sub);
            a.loop(loop);
            a.jmp(done);
            a.Label(ref sub);
            a.add(bx, 2);
            a.ret();
            a.Label(ref done);
            a.hlt();
        });
        m.Start(StartMode.Real, code, (ulong)segment << 4);
        var s = m.Vcpu.GetSpecialRegisters();
        s.Cs = SegmentRegister.RealMode(segment, code: true);
        m.Vcpu.SetSpecialRegisters(s);
        m.Vcpu.SetGeneralRegisters(new GeneralRegisters { Rip = 0, Rsp = Machine.StackTop, Rflags = Machine.FlagsReserved });

        var exit = m.Run();

        Assert.Equal(VcpuExitReason.Halt, exit.Reason);
        var r = m.Regs;
        Assert.Equal(5UL, r.Rax & 0xFFFF);
        Assert.Equal(10UL, r.Rbx & 0xFFFF);
        Assert.Equal((ulong)code.Length, r.Rip);
        Assert.Equal(segment, m.Vcpu.GetSpecialRegisters().Cs.Selector);
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public void Compatibility_mode_loads_segments_from_a_gdt_above_4_gib(string backend)
    {
        // Linear 4 GiB + x maps physical 2 MiB + x, so a GDT base cut to 32 bits would read other memory.
        const ulong highGdt = 0x1_0002_0000;
        const ulong highGdtPhysical = 0x22_0000;
        const ulong shiftedDirectory = 0x30_0000;
        const ulong compat = Machine.CodeAddress + 0x100;
        using var m = new Machine(Backend(backend));
        m.Start(StartMode.Long64, GuestProgram.Assemble(64, Machine.CodeAddress, a =>
        {
            a.lgdt(__[0x7F00]);
            a.push(ProcessorSetup.KernelCode32);
            a.push((int)compat);
            a.db(0x48, 0xCB); // retfq
        }));
        m.Memory.Write(new GuestAddress(compat), GuestProgram.Assemble(32, compat, a =>
        {
            a.mov(ax, ProcessorSetup.KernelData);
            a.mov(ds, ax);
            a.mov(es, ax);
            a.mov(edx, 0x32);
            a.hlt();
        }));

        var setup = new ProcessorSetupOptions();
        ulong pml4 = setup.PageTableAddress.Value;
        ulong pdpt = m.Memory.Read<ulong>(new GuestAddress(pml4)) & ~0xFFFUL;
        ulong pdptFlags = m.Memory.Read<ulong>(new GuestAddress(pdpt)) & 0xFFF;
        ulong pd = m.Memory.Read<ulong>(new GuestAddress(pdpt)) & ~0xFFFUL;
        ulong largePageFlags = m.Memory.Read<ulong>(new GuestAddress(pd)) & 0xFFF;
        m.Memory.Write(new GuestAddress(shiftedDirectory), 0x20_0000UL | largePageFlags);
        m.Memory.Write(new GuestAddress(pdpt + (4 * 8)), shiftedDirectory | pdptFlags);
        var gdt = new byte[0x48];
        m.Memory.Read(setup.GdtAddress, gdt);
        m.Memory.Write(new GuestAddress(highGdtPhysical), gdt);
        m.Memory.Write(new GuestAddress(0x7F00), (ushort)(gdt.Length - 1));
        m.Memory.Write(new GuestAddress(0x7F02), highGdt);

        var exit = m.Run();

        Assert.True(exit.Reason == VcpuExitReason.Halt, exit.ToString());
        var s = m.Vcpu.GetSpecialRegisters();
        Assert.Equal(0x32UL, m.Regs.Rdx);
        Assert.Equal(highGdt, s.Gdt.Base);
        Assert.Equal(ProcessorSetup.KernelCode32, s.Cs.Selector);
        Assert.Equal(ProcessorSetup.KernelData, s.Ds.Selector);
        Assert.True(s.Ds.Present);
    }
}
