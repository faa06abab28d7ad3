using Iced.Intel;
using Virt.Boot;
using Virt.Testing;
using static Iced.Intel.AssemblerRegisters;

namespace Virt.Cpu.Interpreter.Tests;

/// <summary>VMCALL/VMMCALL as hypercall exits, the machine-check MSRs a KVM guest has, and #GP(0) for MSRs that do not exist.</summary>
public sealed class HypercallAndMsrTests
{
    private const ulong Handlers = 0x40000;

    private static Machine Start(string backend, Action<Assembler> code, bool user = false)
    {
        var m = new Machine(TestBackends.Create(backend));
        m.Start(StartMode.Long64, GuestProgram.Assemble(64, Machine.CodeAddress, a =>
        {
            code(a);
            a.hlt();
        }));
        for (int v = 0; v < 32; v++)
        {
            ulong at = Handlers + (ulong)(v * 16);
            m.Memory.Write(new GuestAddress(at), GuestProgram.Assemble(64, at, a => a.hlt()));
        }

        m.InstallIdt(Handlers);
        if (user)
        {
            var s = m.Vcpu.GetSpecialRegisters();
            s.Cs = ProcessorSetup.UserSegment(code: true);
            s.Ss = s.Ds = s.Es = ProcessorSetup.UserSegment(code: false);
            m.Vcpu.SetSpecialRegisters(s);
        }

        return m;
    }

    /// <summary>Runs to the first exit; returns the exception vector the guest ended in (-1: none) and its error code.</summary>
    private static (int Vector, ulong Error, GeneralRegisters Regs) RunToHalt(Machine m)
    {
        var exit = m.Run();
        Assert.True(exit.Reason == VcpuExitReason.Halt, exit.ToString());
        var r = m.Regs;
        int vector = r.Rip > Handlers && r.Rip <= Handlers + (32 * 16) ? (int)((r.Rip - 1 - Handlers) / 16) : -1;
        return (vector, vector is 13 ? m.Memory.Read<ulong>(new GuestAddress(r.Rsp)) : 0, r);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Vmcall_and_vmmcall_at_cpl0_exit_with_the_call_number_and_resume_after_the_instruction(bool amdForm)
    {
        using var m = Start("interpreter", a =>
        {
            a.mov(eax, 0x1234);
            if (amdForm)
            {
                a.vmmcall();
            }
            else
            {
                a.vmcall();
            }

            a.mov(rbx, rax);
        });
        var exit = m.Run();
        Assert.Equal(VcpuExitReason.Hypercall, exit.Reason);
        Assert.Equal(0x1234UL, exit.Value);
        var r = m.Regs;
        r.Rax = 7; // the host's answer
        m.Vcpu.SetGeneralRegisters(r);
        var (vector, _, regs) = RunToHalt(m);
        Assert.Equal(-1, vector);
        Assert.Equal(7UL, regs.Rbx);
    }

    [Theory]
    [MemberData(nameof(TestBackends.Both), MemberType = typeof(TestBackends))]
    public void Vmcall_at_cpl3_returns_minus_eperm_without_an_exit(string backend)
    {
        using var m = Start(backend, a =>
        {
            a.mov(eax, 0x1234);
            if (backend == "kvm" && HostCpu.IsAmd)
            {
                // KVM on an AMD host takes AMD's hypercall instruction; VMCALL is Intel's.
                a.vmmcall();
            }
            else
            {
                a.vmcall();
            }

            a.mov(rbx, rax);
            a.ud2();
        }, user: true);
        var (vector, _, regs) = RunToHalt(m);
        Assert.Equal(6, vector);
        Assert.Equal(ulong.MaxValue, regs.Rbx);
    }

    [Theory]
    [MemberData(nameof(TestBackends.Both), MemberType = typeof(TestBackends))]
    public void Machine_check_msrs_read_as_kvm_gives_them(string backend)
    {
        using var m = Start(backend, a =>
        {
            a.mov(ecx, 0x179); // IA32_MCG_CAP
            a.rdmsr();
            a.mov(r8d, eax);
            a.mov(ecx, 0x17B); // IA32_MCG_CTL: enable all banks, read it back
            a.mov(eax, -1);
            a.mov(edx, -1);
            a.wrmsr();
            a.xor(eax, eax);
            a.xor(edx, edx);
            a.rdmsr();
            a.shl(rdx, 32);
            a.or(rdx, rax);
            a.mov(r9, rdx);
            a.mov(ecx, 0x404); // MC1_CTL: write all ones, read it back
            a.mov(eax, -1);
            a.mov(edx, -1);
            a.wrmsr();
            a.xor(eax, eax);
            a.rdmsr();
            a.mov(r10d, edx);
            a.mov(ecx, 0x405); // MC1_STATUS: clearing is allowed
            a.xor(eax, eax);
            a.xor(edx, edx);
            a.wrmsr();
        });
        var (vector, _, r) = RunToHalt(m);
        Assert.Equal(-1, vector);
        Assert.Equal((0x10AUL, ulong.MaxValue, 0xFFFF_FFFFUL), (r.R8, r.R9, r.R10));
    }

    [Theory]
    [InlineData(0x179u, 0x10Au)] // IA32_MCG_CAP is read-only
    [InlineData(0x10Au, 0u)] // IA32_ARCH_CAPABILITIES is read-only
    [InlineData(0x17Bu, 1u)] // IA32_MCG_CTL: all ones or zero
    [InlineData(0x400u, 5u)] // MC0_CTL: all ones or zero
    [InlineData(0x401u, 1u)] // MC0_STATUS: the guest may only clear it
    [InlineData(0x428u, 0u)] // MC10_CTL: past the last bank
    [InlineData(0x12345u, 0u)] // no such MSR
    public void Wrmsr_that_the_msr_refuses_raises_gp0(uint msr, uint value)
    {
        using var m = Start("interpreter", a =>
        {
            a.mov(ecx, msr);
            a.mov(eax, value);
            a.xor(edx, edx);
            a.wrmsr();
        });
        var (vector, error, _) = RunToHalt(m);
        Assert.Equal((13, 0UL), (vector, error));
    }

    [Theory]
    [InlineData(0x428u)] // MC10_CTL: past the last bank
    [InlineData(0x12345u)]
    [InlineData(0xC0001234u)]
    [InlineData(0x49u)] // IA32_PRED_CMD: write-only
    public void Rdmsr_of_an_msr_that_does_not_exist_or_is_write_only_raises_gp0(uint msr)
    {
        using var m = Start("interpreter", a =>
        {
            a.mov(ecx, msr);
            a.rdmsr();
        });
        var (vector, error, _) = RunToHalt(m);
        Assert.Equal((13, 0UL), (vector, error));
    }

    [Fact]
    public void Cpuid_enumerates_arch_capabilities_and_the_msr_rules_out_the_speculation_side_channels()
    {
        using var m = Start("interpreter", a =>
        {
            a.mov(eax, 7);
            a.xor(ecx, ecx);
            a.cpuid();
            a.mov(r8d, edx);
            a.mov(r9d, ebx);
            a.mov(ecx, 0x10A);
            a.rdmsr();
            a.shl(rdx, 32);
            a.or(rdx, rax);
            a.mov(r10, rdx);
        });
        var (vector, _, r) = RunToHalt(m);
        Assert.Equal(-1, vector);
        Assert.True((r.R8 & (1UL << 29)) != 0, "CPUID.(7,0):EDX[29] enumerates IA32_ARCH_CAPABILITIES");
        Assert.True((r.R8 & (1UL << 4)) != 0 && (r.R9 & (1UL << 9)) != 0, "FSRM and ERMS");

        // RDCL_NO, IBRS_ALL, SSB_NO, MDS_NO, PSCHANGE_MC_NO, TAA_NO, SBDR_SSDP_NO, FBSDP_NO, PSDP_NO, BHI_NO, PBRSB_NO,
        // GDS_NO, RFDS_NO, ITS_NO; none of the bits that claim a control or a vulnerability (RSBA, TSX_CTRL, RRSBA).
        foreach (int bit in new[] { 0, 1, 4, 5, 6, 8, 13, 14, 15, 20, 24, 26, 27, 62 })
        {
            Assert.True((r.R10 & (1UL << bit)) != 0, $"IA32_ARCH_CAPABILITIES bit {bit}");
        }

        foreach (int bit in new[] { 2, 7, 19 })
        {
            Assert.True((r.R10 & (1UL << bit)) == 0, $"IA32_ARCH_CAPABILITIES bit {bit}");
        }
    }

    [Fact]
    public void Spec_ctrl_holds_ibrs_pred_cmd_takes_ibpb_and_other_bits_raise_gp()
    {
        // CPUID.(7,0):EDX[26] enumerates IA32_SPEC_CTRL (IBRS) and IA32_PRED_CMD (IBPB); a guest sets IBRS once and reads it back.
        using var m = Start("interpreter", a =>
        {
            a.mov(eax, 7);
            a.xor(ecx, ecx);
            a.cpuid();
            a.mov(r8d, edx);
            a.mov(ecx, 0x48);
            a.rdmsr();
            a.mov(r9d, eax);
            a.mov(eax, 1);
            a.xor(edx, edx);
            a.wrmsr();
            a.mov(ecx, 0x49);
            a.wrmsr();
            a.mov(ecx, 0x48);
            a.xor(eax, eax);
            a.rdmsr();
            a.mov(r10d, eax);
        });
        var (vector, _, r) = RunToHalt(m);
        Assert.Equal(-1, vector);
        Assert.True((r.R8 & (1UL << 26)) != 0, "CPUID.(7,0):EDX[26] enumerates IA32_SPEC_CTRL and IA32_PRED_CMD");
        Assert.Equal(0UL, r.R9);
        Assert.Equal(1UL, r.R10);

        // IBRS survives a save and restore of the vCPU state, as every writable MSR does.
        var state = m.Vcpu.GetState();
        Assert.Contains(state.Msrs, e => e.Index == MsrIndex.SpecCtrl && e.Value == 1);
        Assert.DoesNotContain(state.Msrs, e => e.Index == MsrIndex.PredCmd);

        // A state saved on a processor with STIBP and SSBD may hold them: the host restores it; bits above are refused.
        m.Vcpu.SetMsrs([new MsrEntry(MsrIndex.SpecCtrl, 7)]);
        Span<MsrEntry> read = [new MsrEntry(MsrIndex.SpecCtrl, 0)];
        m.Vcpu.GetMsrs(read);
        Assert.Equal(7UL, read[0].Value);
        Assert.ThrowsAny<ArgumentException>(() => m.Vcpu.SetMsrs([new MsrEntry(MsrIndex.SpecCtrl, 8)]));
    }

    [Theory]
    [InlineData(0x48u, 2u)] // STIBP: not enumerated
    [InlineData(0x48u, 4u)] // SSBD: not enumerated
    [InlineData(0x49u, 2u)]
    public void Spec_ctrl_and_pred_cmd_refuse_bits_cpuid_does_not_enumerate(uint msr, uint value)
    {
        using var m = Start("interpreter", a =>
        {
            a.mov(ecx, msr);
            a.mov(eax, value);
            a.xor(edx, edx);
            a.wrmsr();
        });
        var (vector, error, _) = RunToHalt(m);
        Assert.Equal((13, 0UL), (vector, error));
    }
}
