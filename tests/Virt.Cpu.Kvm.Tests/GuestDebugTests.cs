using Virt.Boot;
using Virt.Testing;
using Xunit;
using static Iced.Intel.AssemblerRegisters;

namespace Virt.Cpu.Kvm.Tests;

/// <summary>KVM_SET_GUEST_DEBUG through the IVirtualCpu seam: single steps, INT3 interception and host breakpoints.</summary>
public sealed class GuestDebugTests
{
    private const ulong UserStack = 0x70000;

    /// <summary>
    /// The program: an IRETQ to CPL 3 (when <paramref name="user"/>), then <c>mov eax, 1</c>; <c>mov ebx, 2</c>;
    /// <c>int3</c>; <c>mov ecx, 3</c>; a store to 0x20000; an OUT. Returns the code and the address of the first user instruction.
    /// </summary>
    private static (byte[] Code, ulong First) Program(bool user)
    {
        ulong first = 0;
        byte[] code = GuestProgram.Assemble(64, TestVm.CodeAddress, a =>
        {
            var start = a.CreateLabel();
            if (user)
            {
                a.push(ProcessorSetup.UserData);
                a.push((int)UserStack);
                a.push((int)(TestVm.Iopl3 | TestVm.FlagsReserved));
                a.push(ProcessorSetup.UserCode64);
                a.lea(rax, __[start]);
                a.push(rax);
                a.iretq();
            }

            a.Label(ref start);
            a.mov(eax, 1);
            a.mov(ebx, 2);
            a.int3();
            a.mov(ecx, 3);
            a.mov(__dword_ptr[0x20000], ecx);
            a.mov(dx, TestVm.Com1);
            a.@out(dx, al);
        });
        first = TestVm.CodeAddress + (ulong)(user ? Array.IndexOf(code, (byte)0x48, 0) : 0);
        return (code, first);
    }

    public static TheoryData<bool> Modes => new() { false, true };

    [Theory]
    [MemberData(nameof(Modes))]
    public void Debug_events_stop_the_vcpu(bool user)
    {
        HostRequirements.RequireKvm();
        using var vm = TestVm.Create();
        var (code, _) = Program(user);
        vm.Start(StartMode.Long64, code);
        vm.InstallPortWriteFallback();
        var vcpu = vm.Vcpu;
        Assert.Equal(GuestDebugFeatures.SingleStep | GuestDebugFeatures.SoftwareBreakpoints | GuestDebugFeatures.HardwareBreakpoints, vcpu.DebugFeatures);

        var log = new List<string>();
        ulong movEcx = TestVm.CodeAddress + (ulong)Array.IndexOf(code, (byte)0xB9);
        var hw = new DebugRegisters { Dr0 = movEcx, Dr1 = 0x20000, Dr7 = 0x4 | (0x1UL << 20) | (0x3UL << 22) };
        // replace int3 with nop
        code[Array.IndexOf(code, (byte)0xCC)] = 0x90;
        vm.Memory.Write(new GuestAddress(TestVm.CodeAddress), code);
        vcpu.SetGuestDebug(new GuestDebugSettings(SingleStep: false, InterceptBreakpointInstructions: false, hw));
        for (int i = 0; i < 12; i++)
        {
            var exit = TestVm.RunToExit(vcpu);
            var r = vcpu.GetGeneralRegisters();
            var s = vcpu.GetSpecialRegisters();
            log.Add($"{exit} rip=0x{r.Rip:x} cpl={s.Cs.Selector & 3} rax={r.Rax} rbx={r.Rbx} rcx={r.Rcx}");
            if (exit.Reason != VcpuExitReason.Debug)
            {
                break;
            }

            if (exit.IsBreakpointInstruction)
            {
                r.Rip++;
                vcpu.SetGeneralRegisters(r);
            }
        }

        File.WriteAllLines($"/tmp/kvm-debug-{user}.txt", log);
    }
}
