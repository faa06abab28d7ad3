using System.Text;
using Iced.Intel;
using Virt.Boot;
using Virt.Testing;
using static Iced.Intel.AssemblerRegisters;

namespace Virt.Cpu.Interpreter.Tests;

/// <summary>SYSENTER, SYSEXIT and SYSCALL outside 64-bit mode (SDM Vol. 2; AMD APM Vol. 3), with the vendor CPUID names deciding where the two differ.</summary>
public sealed class FastSystemCallTests
{
    private const ulong Handlers = 0x40000;
    private const ulong KernelEntry = 0x48000;
    private const ulong UserCode = 0x20000;
    private const ulong UserResume = 0x21000;
    private const ulong EntryStack = 0x6800;
    private const ushort SysenterCs = ProcessorSetup.KernelCode64;

    private sealed record Outcome(VcpuExit Exit, GeneralRegisters Regs, SpecialRegisters Sregs, int Vector, ulong[] Frame);

    /// <summary>
    /// Starts <paramref name="user"/> at CPL 3 (64-bit, or 32-bit compatibility code when <paramref name="compat"/>),
    /// with <paramref name="kernel"/> at <see cref="KernelEntry"/> and the SYSENTER MSRs pointing there; every exception
    /// handler halts at <see cref="Handlers"/> + 16 * vector. Returns the state at the first exit and the top of the
    /// kernel stack (the exception frame, if one was pushed).
    /// </summary>
    private static Outcome Run(string backend, Action<Assembler> user, Action<Assembler>? kernel = null, bool compat = false, bool amd = false, ulong sysenterCs = SysenterCs)
    {
        using var m = new Machine(TestBackends.Create(backend));
        m.Start(StartMode.Long64, GuestProgram.Assemble(compat ? 32 : 64, UserCode, user), UserCode);
        m.Memory.Write(new GuestAddress(KernelEntry), GuestProgram.Assemble(64, KernelEntry, kernel ?? (a => a.hlt())));
        m.Memory.Write(new GuestAddress(UserResume), GuestProgram.Assemble(compat ? 32 : 64, UserResume, a => a.ud2()));
        for (int v = 0; v < 32; v++)
        {
            ulong at = Handlers + (ulong)(v * 16);
            m.Memory.Write(new GuestAddress(at), GuestProgram.Assemble(64, at, a => a.hlt()));
        }

        m.InstallIdt(Handlers);
        var s = m.Vcpu.GetSpecialRegisters();
        s.Cs = ProcessorSetup.UserSegment(code: true, longMode: !compat);
        s.Ss = s.Ds = s.Es = ProcessorSetup.UserSegment(code: false);
        s.Efer |= ProcessorSetup.EferSyscall;
        m.Vcpu.SetSpecialRegisters(s);
        m.Vcpu.SetMsrs(
        [
            new MsrEntry(MsrIndex.SysenterCs, sysenterCs),
            new MsrEntry(MsrIndex.SysenterEsp, EntryStack),
            new MsrEntry(MsrIndex.SysenterEip, KernelEntry),
            new MsrEntry(MsrIndex.Star, (ulong)SysenterCs << 32),
            new MsrEntry(MsrIndex.Lstar, KernelEntry + 0x100),
            new MsrEntry(MsrIndex.Cstar, KernelEntry),
        ]);
        if (amd)
        {
            var vendor = Encoding.ASCII.GetBytes("AuthenticAMD");
            var leaves = m.Partition.SupportedCpuid.Select(e => e.Function == 0
                ? e with { Ebx = BitConverter.ToUInt32(vendor, 0), Edx = BitConverter.ToUInt32(vendor, 4), Ecx = BitConverter.ToUInt32(vendor, 8) }
                : e).ToList();
            m.Vcpu.SetCpuid(leaves);
        }

        var exit = m.Run();
        var r = m.Regs;
        int vector = r.Rip > Handlers && r.Rip <= Handlers + (32 * 16) ? (int)((r.Rip - 1 - Handlers) / 16) : -1;
        var frame = new ulong[6];
        for (int i = 0; i < frame.Length; i++)
        {
            frame[i] = m.Memory.Read<ulong>(new GuestAddress(r.Rsp + (ulong)(i * 8)));
        }

        return new Outcome(exit, r, m.Vcpu.GetSpecialRegisters(), vector, frame);
    }

    // Interpreter only: the CI machines' KVM (PVM) runs user code natively on the host and answers SYSENTER at CPL 3
    // with #UD, whatever the guest's MSRs and CPUID say.
    [Fact]
    public void Sysenter_from_user_enters_flat_cpl0_64_bit_code_at_the_msrs()
    {
        var o = Run("interpreter", a => a.sysenter());
        Assert.True(o.Exit.Reason == VcpuExitReason.Halt, o.Exit.ToString());
        Assert.Equal((KernelEntry + 1, EntryStack), (o.Regs.Rip, o.Regs.Rsp));
        Assert.Equal((SysenterCs, (ushort)(SysenterCs + 8)), (o.Sregs.Cs.Selector, o.Sregs.Ss.Selector));
        Assert.True(o.Sregs.Cs.Long);
        Assert.Equal(0UL, o.Regs.Rflags & (1UL << 9)); // IF cleared
    }

    [Fact]
    public void Sysexitq_returns_to_64_bit_user_code_at_rdx_with_rsp_from_rcx()
    {
        var o = Run("interpreter", a => a.sysenter(), k =>
        {
            k.mov(ecx, 0x7800);
            k.mov(edx, (uint)UserResume);
            k.sysexitq();
        });
        Assert.Equal(6, o.Vector);
        Assert.Equal(UserResume, o.Frame[0]);
        Assert.Equal((ulong)((SysenterCs + 32) | 3), o.Frame[1]);
        Assert.Equal(0x7800UL, o.Frame[3]);
        Assert.Equal((ulong)((SysenterCs + 40) | 3), o.Frame[4]);
    }

    [Fact]
    public void Sysexit_without_rex_w_returns_to_compatibility_mode()
    {
        var o = Run("interpreter", a => a.sysenter(), k =>
        {
            k.mov(ecx, 0x7800);
            k.mov(edx, (uint)UserResume);
            k.sysexit();
        }, compat: true);
        Assert.Equal(6, o.Vector);
        Assert.Equal(UserResume, o.Frame[0]);
        Assert.Equal((ulong)((SysenterCs + 16) | 3), o.Frame[1]);
        Assert.Equal((ulong)((SysenterCs + 24) | 3), o.Frame[4]);
    }

    [Fact]
    public void Sysenter_with_a_null_sysenter_cs_raises_general_protection()
    {
        var o = Run("interpreter", a => a.sysenter(), sysenterCs: 3);
        Assert.Equal((13, 0UL, UserCode), (o.Vector, o.Frame[0], o.Frame[1]));
    }

    [Fact]
    public void Sysexit_outside_cpl0_raises_general_protection()
    {
        var o = Run("interpreter", a => a.sysexitq());
        Assert.Equal((13, 0UL, UserCode), (o.Vector, o.Frame[0], o.Frame[1]));
    }

    [Fact]
    public void Sysenter_in_long_mode_raises_invalid_opcode_when_cpuid_says_amd()
    {
        var o = Run("interpreter", a => a.sysenter(), amd: true);
        Assert.Equal((6, UserCode), (o.Vector, o.Frame[0]));
    }

    [Fact]
    public void Syscall_in_compatibility_mode_raises_invalid_opcode_when_cpuid_says_intel()
    {
        var o = Run("interpreter", a => a.syscall(), compat: true);
        Assert.Equal((6, UserCode), (o.Vector, o.Frame[0]));
    }

    [Fact]
    public void Syscall_in_compatibility_mode_enters_64_bit_code_at_cstar_when_cpuid_says_amd()
    {
        var o = Run("interpreter", a => a.syscall(), compat: true, amd: true);
        Assert.True(o.Exit.Reason == VcpuExitReason.Halt, o.Exit.ToString());
        Assert.Equal(KernelEntry + 1, o.Regs.Rip);
        Assert.Equal(UserCode + 2, o.Regs.Rcx);
        Assert.True(o.Sregs.Cs.Long);
        Assert.Equal(SysenterCs, o.Sregs.Cs.Selector);
    }
}
