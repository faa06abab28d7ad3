using Iced.Intel;
using Virt.Boot;
using Virt.Testing;
using static Iced.Intel.AssemblerRegisters;

namespace Virt.Cpu.Interpreter.Tests;

/// <summary>
/// Segment state across CPL 0 -> CPL 3 -> CPL 0 in 64-bit mode (SDM Vol. 2, IRET and RET pseudocode; Vol. 3, 3.4.4):
/// the return to the outer level nulls data segments more privileged than CPL 3, but the FS and GS bases stay, so
/// the exception that brings the processor back to CPL 0 finds them as the kernel left them.
/// </summary>
public sealed class PrivilegeRoundTripTests
{
    private const ulong Handlers = 0x40000;
    private const ulong Common = 0x41000;
    private const ulong GsData = 0x50000;
    private const ulong FsData = 0x60000;
    private const uint MsrFsBase = 0xC0000100, MsrGsBase = 0xC0000101;

    /// <summary>
    /// CPL 0 loads ES, FS and GS with the DPL 0 data segment and DS with the DPL 3 one, sets the FS and GS bases,
    /// leaves for CPL 3 with <paramref name="leave"/>; user code records its selectors in RBX (ES), RSI (FS), RDI (GS),
    /// R8 (DS) and raises #UD, whose CPL 0 handler reads FS:[0] and GS:[0] into RDX and RAX.
    /// </summary>
    private static GeneralRegisters RoundTrip(string backend, Action<Assembler, Label> leave)
    {
        using var m = new Machine(TestBackends.Create(backend));
        m.Start(StartMode.Long64, GuestProgram.Assemble(64, Machine.CodeAddress, a =>
        {
            var user = a.CreateLabel();
            a.mov(eax, ProcessorSetup.KernelData);
            a.mov(es, eax);
            a.mov(fs, eax);
            a.mov(gs, eax);
            a.mov(eax, ProcessorSetup.UserData);
            a.mov(ds, eax);
            a.xor(edx, edx);
            a.mov(ecx, MsrGsBase);
            a.mov(eax, (uint)GsData);
            a.wrmsr();
            a.mov(ecx, MsrFsBase);
            a.mov(eax, (uint)FsData);
            a.wrmsr();
            leave(a, user);
            a.Label(ref user);
            a.mov(ebx, es);
            a.mov(esi, fs);
            a.mov(edi, gs);
            a.mov(r8d, ds);
            a.ud2();
        }));
        for (int v = 0; v < 32; v++)
        {
            ulong at = Handlers + (ulong)(v * 16);
            m.Memory.Write(new GuestAddress(at), GuestProgram.Assemble(64, at, a => a.jmp(Common)));
        }

        m.Memory.Write(new GuestAddress(Common), GuestProgram.Assemble(64, Common, a =>
        {
            a.mov(rax, __qword_ptr.gs[0]);
            a.mov(rdx, __qword_ptr.fs[0]);
            a.hlt();
        }));
        m.Memory.Write(new GuestAddress(GsData), 0x6565_6565_0000_1111UL);
        m.Memory.Write(new GuestAddress(FsData), 0x6464_6464_0000_2222UL);
        m.InstallIdt(Handlers);
        var exit = m.Run();
        Assert.True(exit.Reason == VcpuExitReason.Halt, exit.ToString());
        var r = m.Regs;

        // The #UD frame on the TSS stack: it was raised at CPL 3.
        Assert.Equal((ulong)ProcessorSetup.UserCode64, m.Memory.Read<ulong>(new GuestAddress(Machine.KernelStackTop - 32)));
        return r;
    }

    private static void Iretq(Assembler a, Label user)
    {
        a.push(ProcessorSetup.UserData);
        a.push((int)Machine.StackTop);
        a.push(0x2);
        a.push(ProcessorSetup.UserCode64);
        a.lea(rax, __[user]);
        a.push(rax);
        a.iretq();
    }

    private static void Retfq(Assembler a, Label user)
    {
        a.push(ProcessorSetup.UserData);
        a.push((int)Machine.StackTop);
        a.push(ProcessorSetup.UserCode64);
        a.lea(rax, __[user]);
        a.push(rax);
        a.db(0x48, 0xCB); // RETFQ
    }

    [Theory]
    [MemberData(nameof(TestBackends.Both), MemberType = typeof(TestBackends))]
    public void Gs_and_fs_bases_survive_iret_to_user_and_an_exception_back(string backend)
    {
        var r = RoundTrip(backend, Iretq);
        Assert.Equal((0x6565_6565_0000_1111UL, 0x6464_6464_0000_2222UL), (r.Rax, r.Rdx));
    }

    // Selectors are checked on the interpreter only: user code under the CI machines' KVM (PVM) runs on the host's own
    // user segments, so MOV from a segment register at CPL 3 reads 0 for every data segment, DPL 3 ones included.
    [Fact]
    public void Iret_to_user_nulls_only_the_segments_more_privileged_than_cpl3()
    {
        var r = RoundTrip("interpreter", Iretq);
        Assert.Equal((0UL, 0UL, 0UL, (ulong)ProcessorSetup.UserData), (r.Rbx, r.Rsi, r.Rdi, r.R8));
    }

    [Fact]
    public void Far_ret_to_user_nulls_the_same_segments_and_keeps_the_bases()
    {
        var r = RoundTrip("interpreter", Retfq);
        Assert.Equal((0UL, 0UL, 0UL, (ulong)ProcessorSetup.UserData), (r.Rbx, r.Rsi, r.Rdi, r.R8));
        Assert.Equal((0x6565_6565_0000_1111UL, 0x6464_6464_0000_2222UL), (r.Rax, r.Rdx));
    }
}
