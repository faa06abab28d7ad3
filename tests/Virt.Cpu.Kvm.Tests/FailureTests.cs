using Virt.Boot;
using Virt.Testing;
using Xunit;
using static Iced.Intel.AssemblerRegisters;

namespace Virt.Cpu.Kvm.Tests;

public sealed class FailureTests
{
    [Fact]
    public void Internal_error_reports_sub_error_rip_and_the_instruction_bytes_read_through_the_page_tables()
    {
        HostRequirements.RequireKvm();
        using var vm = TestVm.Create();
        // Run the instruction from a linear address that is not its physical one, so the bytes are only
        // right if they were read by walking the guest's page tables: map linear 0x4000_0000 (PDPT entry 1)
        // to the code's 2 MiB page at physical 0.
        const ulong alias = 0x4000_0000;
        var code = GuestProgram.Assemble(64, alias + TestVm.CodeAddress, a =>
        {
            a.nop();
            a.@lock.cmpxchg16b(__xmmword_ptr[rsi]); // refused by KVMs that emulate CPL 0 code; native elsewhere
            a.hlt();
        });
        vm.Start(StartMode.Long64, code);
        vm.Memory.Write(new GuestAddress(0x9000 + 0x1000 + 8), 0x30000UL | 0x7); // PDPT[1] -> a new page directory
        vm.Memory.Write(new GuestAddress(0x30000), 0UL | 0x87);                 // PD[0] -> 2 MiB page at 0
        var regs = vm.Vcpu.GetGeneralRegisters();
        regs.Rip = alias + TestVm.CodeAddress;
        regs.Rsi = 0x20000;
        vm.Vcpu.SetGeneralRegisters(regs);

        var exit = TestVm.RunToExit(vm.Vcpu);
        if (exit.Reason == VcpuExitReason.Halt)
        {
            Assert.Skip("This KVM runs lock cmpxchg16b natively; there is no internal error to report.");
        }

        Assert.Equal(VcpuExitReason.InternalError, exit.Reason);
        var fault = Assert.IsType<VcpuFault>(exit.Fault);
        Assert.NotEqual(0UL, fault.Code); // KVM_INTERNAL_ERROR_* sub-errors start at 1
        Assert.Equal(alias + TestVm.CodeAddress + 1, fault.Rip);
        Assert.Equal(code.AsSpan(1).ToArray(), fault.InstructionBytes.Span[..(code.Length - 1)].ToArray());
        Assert.NotNull(fault.Registers);
        Assert.Contains("internal error", fault.Description, StringComparison.Ordinal);
    }
}
