using Iced.Intel;
using Virt.Boot;
using Virt.Testing;
using Xunit;
using static Iced.Intel.AssemblerRegisters;

namespace Virt.Cpu.Kvm.Tests;

public sealed class GuestModeTests
{
    [Fact]
    public void Real_mode_guest_writes_a_port_and_halts_with_its_registers()
    {
        HostRequirements.RequireKvm();
        using var vm = TestVm.Create();
        const ulong realModeCode = 0x1000; // inside the first 64 KiB, so CS = 0 and IP = the address
        var code = GuestProgram.Assemble(16, realModeCode, a =>
        {
            a.mov(bx, 0x1234);
            a.mov(dx, TestVm.Com1);
            a.mov(al, (byte)'R');
            a.@out(dx, al);
            a.hlt();
        });
        vm.Start(StartMode.Real, code, address: realModeCode, stack: 0x7000);

        var exit = TestVm.RunToExit(vm.Vcpu);
        Assert.Equal(VcpuExitReason.PortIo, exit.Reason);
        Assert.Equal(TestVm.Com1, exit.Port);
        Assert.True(exit.IsWrite);
        Assert.Equal(1, exit.Size);
        Assert.Equal((byte)'R', vm.Vcpu.ExitData[0]);

        Assert.Equal(VcpuExitReason.Halt, TestVm.RunToExit(vm.Vcpu).Reason);
        var regs = vm.Vcpu.GetGeneralRegisters();
        Assert.Equal(0x1234UL, regs.Rbx & 0xFFFF);
        Assert.Equal(realModeCode + (ulong)code.Length, regs.Rip); // just past the hlt
        Assert.Equal(0UL, vm.Vcpu.GetSpecialRegisters().Cr0 & ProcessorSetup.Cr0ProtectionEnable);
    }

    [Fact]
    public void Protected_mode_guest_writes_a_port_and_halts_with_its_registers()
    {
        HostRequirements.RequireKvm();
        using var vm = TestVm.Create();
        vm.Start(StartMode.Protected32, GuestProgram.Assemble(32, TestVm.CodeAddress, a =>
        {
            a.mov(ebx, 0xCAFEBABE);
            a.mov(dx, TestVm.Com1 + 1);
            a.mov(eax, 0x50);
            a.@out(dx, al);
            a.hlt();
        }));

        var exit = TestVm.RunToExit(vm.Vcpu);
        Assert.Equal(VcpuExitReason.PortIo, exit.Reason);
        Assert.Equal(TestVm.Com1 + 1, exit.Port);
        Assert.Equal(0x50, vm.Vcpu.ExitData[0]);
        Assert.Equal(VcpuExitReason.Halt, TestVm.RunToExit(vm.Vcpu).Reason);
        var regs = vm.Vcpu.GetGeneralRegisters();
        Assert.Equal(0xCAFEBABEUL, regs.Rbx);
        var s = vm.Vcpu.GetSpecialRegisters();
        Assert.Equal(ProcessorSetup.KernelCode32, s.Cs.Selector);
        Assert.True(s.Cs.DefaultBig);
    }

    [Fact]
    public void Registers_set_between_exits_are_read_back_at_once_and_seen_by_the_guest_on_the_next_run()
    {
        HostRequirements.RequireKvm();
        using var vm = TestVm.Create();
        vm.Start(StartMode.Long64, GuestProgram.Assemble(64, TestVm.CodeAddress, a =>
        {
            a.mov(rbx, 1);
            a.mov(dx, 0x3FA);
            a.@out(dx, al);     // first exit: the host rewrites registers here
            a.add(rbx, rcx);    // uses the host's RCX and RBX
            a.mov(r13, rbx);
            a.hlt();
        }));

        Assert.Equal(VcpuExitReason.PortIo, TestVm.RunToExit(vm.Vcpu).Reason);
        var regs = vm.Vcpu.GetGeneralRegisters();
        Assert.Equal(1UL, regs.Rbx);
        regs.Rbx = 40;
        regs.Rcx = 2;
        regs.R12 = 0xFEEDFACE;
        vm.Vcpu.SetGeneralRegisters(regs);
        var readBack = vm.Vcpu.GetGeneralRegisters();
        Assert.Equal(40UL, readBack.Rbx);
        Assert.Equal(2UL, readBack.Rcx);
        Assert.Equal(regs.Rip, readBack.Rip);

        Assert.Equal(VcpuExitReason.Halt, TestVm.RunToExit(vm.Vcpu).Reason);
        var after = vm.Vcpu.GetGeneralRegisters();
        Assert.Equal(42UL, after.R13);
        Assert.Equal(0xFEEDFACEUL, after.R12);
    }

    [Fact]
    public void Long_mode_guest_writes_and_reads_ports_and_halts_with_its_registers()
    {
        HostRequirements.RequireKvm();
        using var vm = TestVm.Create();
        vm.Start(StartMode.Long64, GuestProgram.Assemble(64, TestVm.CodeAddress, a =>
        {
            a.mov(r15, 0x1122334455667788);
            a.mov(dx, 0x3FA);
            a.mov(eax, 0x44332211);
            a.@out(dx, eax);
            a.mov(dx, 0x60);
            a.@in(al, dx);
            a.mov(r14, rax);
            a.hlt();
        }));

        var exit = TestVm.RunToExit(vm.Vcpu);
        Assert.Equal(VcpuExitReason.PortIo, exit.Reason);
        Assert.Equal((ushort)0x3FA, exit.Port);
        Assert.Equal(4, exit.Size);
        Assert.Equal(1, exit.Count);
        Assert.True(exit.IsWrite);
        Assert.Equal(new byte[] { 0x11, 0x22, 0x33, 0x44 }, vm.Vcpu.ExitData.ToArray());

        exit = TestVm.RunToExit(vm.Vcpu);
        Assert.Equal(VcpuExitReason.PortIo, exit.Reason);
        Assert.Equal((ushort)0x60, exit.Port);
        Assert.False(exit.IsWrite);
        Assert.Equal(1, vm.Vcpu.ExitData.Length);
        vm.Vcpu.ExitData[0] = 0x5A;

        Assert.Equal(VcpuExitReason.Halt, TestVm.RunToExit(vm.Vcpu).Reason);
        var regs = vm.Vcpu.GetGeneralRegisters();
        Assert.Equal(0x1122334455667788UL, regs.R15);
        Assert.Equal(0x44332211UL & ~0xFFUL | 0x5A, regs.R14);
        Assert.Equal(ProcessorSetup.KernelCode64, vm.Vcpu.GetSpecialRegisters().Cs.Selector);
    }

    [Fact]
    public void User_mode_loop_of_a_hundred_million_iterations_runs_to_its_port_write()
    {
        HostRequirements.RequireKvm();
        using var vm = TestVm.Create();
        const ulong userStack = 0x70000;
        vm.Start(StartMode.Long64, GuestProgram.Assemble(64, TestVm.CodeAddress, a =>
        {
            var user = a.CreateLabel();
            var loop = a.CreateLabel();
            // iretq frame: SS, RSP, RFLAGS, CS, RIP. IOPL 3 lets the CPL 3 code use OUT.
            a.push(ProcessorSetup.UserData);
            a.push((int)userStack);
            a.push((int)(TestVm.Iopl3 | TestVm.FlagsReserved));
            a.push(ProcessorSetup.UserCode64);
            a.lea(rax, __[user]);
            a.push(rax);
            a.iretq();
            a.Label(ref user);
            a.mov(r12w, cs);
            a.mov(ecx, 100_000_000);
            a.Label(ref loop);
            a.dec(rcx);
            a.jnz(loop);
            a.mov(dx, TestVm.Com1);
            a.mov(al, (byte)'U');
            a.@out(dx, al);
            var self = a.CreateLabel();
            a.Label(ref self);
            a.jmp(self);
        }));
        vm.InstallPortWriteFallback();

        var exit = TestVm.RunToExit(vm.Vcpu);
        Assert.True(exit.Reason == VcpuExitReason.PortIo, exit.ToString());
        Assert.Equal((byte)'U', vm.Vcpu.ExitData[0]);
        var regs = vm.Vcpu.GetGeneralRegisters();
        Assert.Equal(0UL, regs.Rcx);
        Assert.Equal(0x55UL, regs.Rax & 0xFF);
        // The loop read CS into R12: its RPL is the CPL the loop ran at, whichever way the OUT then exited.
        Assert.Equal((ulong)ProcessorSetup.UserCode64, regs.R12 & 0xFFFF);
    }

    [Fact]
    public void Mmio_write_carries_address_size_and_data_and_mmio_read_returns_the_host_value()
    {
        HostRequirements.RequireKvm();
        using var vm = TestVm.Create();
        const ulong mmio = 0x1000_0000; // far above the 4 MiB of RAM, inside the identity map
        vm.Start(StartMode.Long64, GuestProgram.Assemble(64, TestVm.CodeAddress, a =>
        {
            a.mov(ebx, (int)mmio);
            a.mov(__dword_ptr[rbx], unchecked((int)0xDEADBEEF));
            a.mov(eax, __dword_ptr[rbx + 8]);
            a.mov(r13, rax);
            a.hlt();
        }));

        var exit = TestVm.RunToExit(vm.Vcpu);
        Assert.Equal(VcpuExitReason.Mmio, exit.Reason);
        Assert.True(exit.IsWrite);
        Assert.Equal(new GuestAddress(mmio), exit.Address);
        Assert.Equal(4, exit.Size);
        Assert.Equal(0xDEADBEEFu, BitConverter.ToUInt32(vm.Vcpu.ExitData));

        exit = TestVm.RunToExit(vm.Vcpu);
        Assert.Equal(VcpuExitReason.Mmio, exit.Reason);
        Assert.False(exit.IsWrite);
        Assert.Equal(new GuestAddress(mmio + 8), exit.Address);
        Assert.Equal(4, exit.Size);
        BitConverter.TryWriteBytes(vm.Vcpu.ExitData, 0x12345678u);

        Assert.Equal(VcpuExitReason.Halt, TestVm.RunToExit(vm.Vcpu).Reason);
        Assert.Equal(0x12345678UL, vm.Vcpu.GetGeneralRegisters().R13);
    }

    [Fact]
    public void Exception_without_an_idt_ends_in_a_shutdown()
    {
        HostRequirements.RequireKvm();
        using var vm = TestVm.Create();
        vm.Start(StartMode.Long64, GuestProgram.Assemble(64, TestVm.CodeAddress, a =>
        {
            a.nop();
            a.ud2(); // #UD with an IDT limit of 0 -> #GP -> #DF -> triple fault
        }));

        var exit = TestVm.RunToExit(vm.Vcpu);
        Assert.Equal(VcpuExitReason.Shutdown, exit.Reason);
        Assert.NotNull(exit.Fault);
    }

    [Fact]
    public void Cpuid_leaf_one_reports_each_vcpus_apic_id()
    {
        HostRequirements.RequireKvm();
        using var vm = TestVm.Create(new PartitionOptions { VcpuCount = 2 });
        var code = GuestProgram.Assemble(64, TestVm.CodeAddress, a =>
        {
            a.mov(eax, 1);
            a.cpuid();
            a.hlt();
        });
        vm.Start(StartMode.Long64, code, index: 0);
        vm.Start(StartMode.Long64, code, index: 1);
        for (int i = 0; i < 2; i++)
        {
            Assert.Equal(VcpuExitReason.Halt, TestVm.RunToExit(vm.Vcpus[i]).Reason);
            Assert.Equal((ulong)i, (vm.Vcpus[i].GetGeneralRegisters().Rbx >> 24) & 0xFF);
        }
    }
}
