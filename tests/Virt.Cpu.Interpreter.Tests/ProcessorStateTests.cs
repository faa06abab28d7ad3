using Virt.Cpu.Interpreter.Tests.Differential;
using Virt.Testing;
using Xunit;
using static Iced.Intel.AssemblerRegisters;

namespace Virt.Cpu.Interpreter.Tests;

/// <summary>The XSAVE image, debug registers and CPUID faulting, the same on the interpreter and KVM.</summary>
public sealed class ProcessorStateTests
{
    public static TheoryData<string> Backends() => TestBackends.Both();

    [Theory]
    [MemberData(nameof(Backends))]
    public void Cpuid_at_cpl3_faults_with_gp_once_cpuid_faulting_is_on(string backend)
    {
        using var vm = new DiffVm(TestBackends.Create(backend));
        Span<MsrEntry> info = [new MsrEntry(MsrIndex.PlatformInfo, 0)];
        Assert.SkipUnless(vm.Partition.SupportedMsrs.Contains(MsrIndex.MiscFeaturesEnables), $"{backend} has no MSR_MISC_FEATURES_ENABLES");
        vm.Vcpu.GetMsrs(info);
        Assert.SkipWhen((info[0].Value & (1UL << 31)) == 0, $"{backend} does not offer CPUID faulting (MSR_PLATFORM_INFO bit 31)");
        vm.Vcpu.SetMsrs([new MsrEntry(MsrIndex.MiscFeaturesEnables, 1)]);
        var code = GuestProgram.Assemble(64, DiffVm.CodeAddress, a =>
        {
            a.mov(eax, 1);
            a.xor(ecx, ecx);
            a.cpuid();
            a.hlt();
        });
        var result = vm.Run(code, ulong.MaxValue, new GeneralRegisters { Rip = DiffVm.CodeAddress, Rsp = DiffVm.ScratchAddress + 0x1000, Rflags = 0x202 }, new byte[DiffVm.ScratchSize]);
        Assert.Equal(13, result.Vector);
        Assert.Equal(0UL, result.ErrorCode);
        Assert.Equal(DiffVm.CodeAddress + 7, result.Rip); // the cpuid itself (after mov eax,1 and xor ecx,ecx)

        vm.Vcpu.SetMsrs([new MsrEntry(MsrIndex.MiscFeaturesEnables, 0)]);
        result = vm.Run(code, ulong.MaxValue, new GeneralRegisters { Rip = DiffVm.CodeAddress, Rsp = DiffVm.ScratchAddress + 0x1000, Rflags = 0x202 }, new byte[DiffVm.ScratchSize]);
        Assert.Equal(13, result.Vector); // now the hlt at CPL 3
        Assert.Equal(DiffVm.CodeAddress + 9, result.Rip);
    }

    [Fact]
    public void Interpreter_xsave_image_carries_the_fpu_and_avx_state_and_refuses_avx512_state()
    {
        using var m = new Machine();
        var fpu = FpuState.Initial;
        fpu.Mxcsr = 0x9FC0;
        fpu.ControlWord = 0x027F;
        fpu.GetXmm(5).Fill(0x3C);
        m.Vcpu.SetXsaveState(XsaveState.FromFpu(fpu));
        var image = m.Vcpu.GetXsaveState();
        Assert.Equal(0x9FC0u, m.Vcpu.GetFpuState().Mxcsr);
        Assert.Equal(0x9FC0u, image.Fpu.Mxcsr);
        Assert.Equal((ushort)0x027F, image.Fpu.ControlWord);
        Assert.Equal(0x3C, image.Fpu.GetXmm(5)[15]);
        Assert.Equal(XsaveComponents.X87 | XsaveComponents.Sse, image.StateComponents);

        // The upper halves of the YMM registers (the AVX component at offset 576) round-trip with XCR0.
        var avx = new byte[1024];
        image.Area.CopyTo(avx);
        avx[512] |= (byte)XsaveComponents.Avx;
        avx[576] = 1;
        avx[576 + 255] = 0xAB;
        m.Vcpu.SetXsaveState(new XsaveState(7, avx));
        var back = m.Vcpu.GetXsaveState();
        Assert.Equal(7UL, back.Xcr0);
        Assert.Equal(XsaveComponents.X87 | XsaveComponents.Sse | XsaveComponents.Avx, back.StateComponents);
        Assert.Equal(1, back.Area[576]);
        Assert.Equal(0xAB, back.Area[576 + 255]);
        Assert.Equal(0x3C, back.Fpu.GetXmm(5)[15]);

        // AVX-512 state it does not have is refused, by XCR0 or by a present, non-zero component.
        var k = new byte[2048];
        back.Area.CopyTo(k);
        k[512] |= (byte)XsaveComponents.Avx512OpMask;
        k[1100] = 1;
        var ex = Assert.Throws<ArgumentException>(() => m.Vcpu.SetXsaveState(new XsaveState(0xE7, k)));
        Assert.Contains("Avx512", ex.Message, StringComparison.Ordinal);
        ex = Assert.Throws<ArgumentException>(() => m.Vcpu.SetXsaveState(new XsaveState(7, k)));
        Assert.Contains("Avx512OpMask", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Interpreter_debug_registers_round_trip_and_mov_from_dr_sees_them()
    {
        using var m = Machine.Long64(a =>
        {
            a.mov(rax, dr0);
            a.mov(rbx, dr7);
            a.hlt();
        });
        var d = DebugRegisters.Initial;
        d.Dr0 = 0x1234_5000;
        d.Dr7 = DebugRegisters.Dr7Reset | 0x2;
        m.Vcpu.SetDebugRegisters(d);
        Assert.Equal(d.Dr0, m.Vcpu.GetDebugRegisters().Dr0);
        m.Run();
        Assert.Equal(0x1234_5000UL, m.Regs.Rax);
        Assert.Equal(DebugRegisters.Dr7Reset | 0x2, m.Regs.Rbx);
    }
}
