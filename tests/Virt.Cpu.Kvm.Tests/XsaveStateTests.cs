using Virt.Boot;
using Virt.Testing;
using Xunit;
using static Iced.Intel.AssemblerRegisters;

namespace Virt.Cpu.Kvm.Tests;

/// <summary>The whole XSAVE-covered state (x87, SSE, AVX) is read and written through KVM_GET/SET_XSAVE and XCR0.</summary>
public sealed class XsaveStateTests
{
    private const ulong UserStack = 0x70000;
    private const ulong Output = 0x60000;
    private const ulong Done = 0x1000_0000; // no RAM: the store that ends each program is an MMIO exit

    /// <summary>CR4.OSXSAVE: XGETBV/XSETBV and the AVX instructions are enabled.</summary>
    private const ulong Cr4OsXsave = 1UL << 18;

    private static bool HostHasAvx(IPartition partition) =>
        partition.SupportedCpuid.Any(e => e.Function == 1 && (e.Ecx & (1u << 28)) != 0 && (e.Ecx & (1u << 26)) != 0);

    /// <summary>Enters CPL 3 at the code after the iretq frame the prologue builds.</summary>
    private static byte[] UserProgram(Action<Iced.Intel.Assembler> user) => GuestProgram.Assemble(64, TestVm.CodeAddress, a =>
    {
        var start = a.CreateLabel();
        a.push(ProcessorSetup.UserData);
        a.push((int)UserStack);
        a.push((int)TestVm.FlagsReserved);
        a.push(ProcessorSetup.UserCode64);
        a.lea(rax, __[start]);
        a.push(rax);
        a.iretq();
        a.Label(ref start);
        user(a);
        a.mov(__qword_ptr[Done], rax);
        a.hlt();
    });

    private static TestVm AvxVm()
    {
        HostRequirements.RequireKvm();
        Assert.SkipUnless(System.Runtime.Intrinsics.X86.Avx.IsSupported, "This host's processor has no AVX, so there is no upper YMM state to plant.");
        return TestVm.Create(memorySize: 1UL << 20);
    }

    /// <summary>
    /// Where KVM offers XSAVE and AVX, enables them the architectural way (CR4.OSXSAVE, XCR0). Where it does
    /// not (a KVM that runs CPL 3 code as host user code, like PVM), user code still has the host's XCR0:
    /// AVX instructions run there although the guest's CPUID hides them, which is why the reset must cover them.
    /// </summary>
    private static void EnableAvxWhereOffered(TestVm vm)
    {
        if (!HostHasAvx(vm.Partition))
        {
            return;
        }

        var s = vm.Vcpu.GetSpecialRegisters();
        s.Cr4 |= Cr4OsXsave;
        vm.Vcpu.SetSpecialRegisters(s);
        var state = vm.Vcpu.GetXsaveState();
        vm.Vcpu.SetXsaveState(new XsaveState((ulong)(XsaveComponents.X87 | XsaveComponents.Sse | XsaveComponents.Avx), state.Area));
    }

    [Fact]
    public void Restoring_a_saved_image_clears_vector_and_x87_state_a_guest_left_behind()
    {
        using var vm = AvxVm();
        vm.Start(StartMode.Long64, UserProgram(a =>
        {
            a.vpcmpeqb(ymm0, ymm0, ymm0);   // all ones, upper half included
            a.vpcmpeqb(ymm7, ymm7, ymm7);
            a.mov(__dword_ptr[Output], 0x7F80); // every exception masked, round toward zero
            a.ldmxcsr(__dword_ptr[Output]);
            a.fld1();                        // ST0 = 1.0: the x87 tag word is no longer empty
            a.mov(__word_ptr[Output], 0x0C7F);
            a.fldcw(__word_ptr[Output]);
        }));
        EnableAvxWhereOffered(vm);
        var clean = vm.Vcpu.GetXsaveState();

        var exit = TestVm.RunToExit(vm.Vcpu);
        Assert.SkipWhen(exit.Reason == VcpuExitReason.Shutdown, $"The guest cannot execute AVX on this KVM ({exit}).");
        Assert.True(exit.Reason == VcpuExitReason.Mmio && exit.Address.Value == Done, exit.ToString());
        var dirty = vm.Vcpu.GetXsaveState();
        Assert.Equal(0x7F80u, dirty.Fpu.Mxcsr);
        Assert.Equal((ushort)0x0C7F, dirty.Fpu.ControlWord);
        Assert.NotEqual(0, dirty.Fpu.AbridgedTagWord);

        // Back to the saved image, then let the guest itself report what it sees.
        vm.Vcpu.SetXsaveState(clean);
        var restored = vm.Vcpu.GetXsaveState();
        Assert.Equal(clean.Fpu.Mxcsr, restored.Fpu.Mxcsr);
        Assert.Equal(0, restored.Fpu.AbridgedTagWord);
        Assert.Equal(XsaveComponents.None, restored.StateComponents & XsaveComponents.Avx & ~clean.StateComponents);

        vm.Memory.Write(new GuestAddress(TestVm.CodeAddress + 0x800), GuestProgram.Assemble(64, TestVm.CodeAddress + 0x800, a =>
        {
            a.vmovdqu(__ymmword_ptr[Output], ymm0);
            a.vmovdqu(__ymmword_ptr[Output + 32], ymm7);
            a.stmxcsr(__dword_ptr[Output + 64]);
            a.fnstcw(__word_ptr[Output + 68]);
            a.fnstsw(__word_ptr[Output + 70]);
            a.mov(__qword_ptr[Done], rax);
            a.hlt();
        }));
        var regs = vm.Vcpu.GetGeneralRegisters();
        regs.Rip = TestVm.CodeAddress + 0x800;
        vm.Vcpu.SetGeneralRegisters(regs);
        exit = TestVm.RunToExit(vm.Vcpu);
        Assert.True(exit.Reason == VcpuExitReason.Mmio && exit.Address.Value == Done, exit.ToString());

        var seen = new byte[72];
        vm.Memory.Read(new GuestAddress(Output), seen);
        Assert.True(seen.AsSpan(0, 64).IndexOfAnyExcept((byte)0) < 0, "YMM0 and YMM7 kept state from before the restore: " + Convert.ToHexString(seen.AsSpan(0, 64)));
        Assert.Equal(0x1F80u, BitConverter.ToUInt32(seen, 64));
        Assert.Equal((ushort)0x037F, BitConverter.ToUInt16(seen, 68));
        Assert.Equal(0, BitConverter.ToUInt16(seen, 70) & 0x3800); // TOP back to 0: the fld1 is gone
    }

    [Fact]
    public void Fpu_state_written_by_the_host_is_what_the_guest_reads()
    {
        HostRequirements.RequireKvm();
        using var vm = TestVm.Create(memorySize: 1UL << 20);
        vm.Start(StartMode.Long64, UserProgram(a =>
        {
            a.stmxcsr(__dword_ptr[Output]);
            a.fnstcw(__word_ptr[Output + 4]);
            a.movdqu(__xmmword_ptr[Output + 16], xmm3);
        }));
        var fpu = FpuState.Initial;
        fpu.Mxcsr = 0x9FC0;          // flush-to-zero, denormals-are-zero, all masked
        fpu.ControlWord = 0x027F;    // 53-bit precision
        fpu.GetXmm(3).Fill(0xA5);
        vm.Vcpu.SetFpuState(fpu);
        Assert.Equal(0x9FC0u, vm.Vcpu.GetFpuState().Mxcsr);

        var exit = TestVm.RunToExit(vm.Vcpu);
        Assert.True(exit.Reason == VcpuExitReason.Mmio && exit.Address.Value == Done, exit.ToString());
        Assert.Equal(0x9FC0u, vm.Memory.Read<uint>(new GuestAddress(Output)));
        Assert.Equal((ushort)0x027F, vm.Memory.Read<ushort>(new GuestAddress(Output + 4)));
        Assert.Equal(0xA5A5A5A5A5A5A5A5UL, vm.Memory.Read<ulong>(new GuestAddress(Output + 16)));
    }

    [Fact]
    public void Debug_registers_round_trip()
    {
        HostRequirements.RequireKvm();
        using var vm = TestVm.Create(memorySize: 1UL << 20);
        var d = DebugRegisters.Initial;
        d.Dr0 = 0x1000;
        d.Dr3 = 0x7FFF_0000;
        d.Dr7 = DebugRegisters.Dr7Reset | 0x3; // L0/G0 set, execute breakpoint
        vm.Vcpu.SetDebugRegisters(d);
        var back = vm.Vcpu.GetDebugRegisters();
        Assert.Equal(d.Dr0, back.Dr0);
        Assert.Equal(d.Dr3, back.Dr3);
        Assert.Equal(d.Dr7, back.Dr7 & 0xFFFF_FFFF);
    }
}
