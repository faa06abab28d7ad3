using Iced.Intel;
using Virt.Cpu;
using Virt.Cpu.Interpreter;
using Virt.Memory;
using Virt.Testing;
using Xunit;
using static Iced.Intel.AssemblerRegisters;

namespace Virt.Boot.Tests;

/// <summary>
/// Runs tiny kernels on the interpreter backend from each loader's entry state, so the registers,
/// modes and boot structures are checked the way a kernel sees them, not only as bytes.
/// </summary>
public sealed class EntryStateTests
{
    private static VcpuExit RunUntilExit(IVirtualCpu vcpu)
    {
        for (int i = 0; i < 1000; i++)
        {
            var exit = vcpu.Run();
            if (exit.Reason != VcpuExitReason.Interrupted)
            {
                return exit;
            }
        }

        throw new TimeoutException("the guest did not stop");
    }

    private static (IPartition Partition, IVirtualCpu Vcpu) Start(GuestMemory memory, BootResult boot)
    {
        var partition = new InterpreterHypervisor().CreatePartition(memory, new PartitionOptions());
        var vcpu = partition.CreateVcpu(0);
        vcpu.SetSpecialRegisters(boot.SpecialRegisters);
        vcpu.SetGeneralRegisters(boot.Registers);
        return (partition, vcpu);
    }

    [Fact]
    public void BzImage_64_bit_entry_sees_the_zero_page_in_rsi_and_its_command_line()
    {
        using var m = GuestMemory.CreateRam(64 << 20);
        var image = SyntheticImages.BzImage(payloadSize: 0x1000);
        // The protected-mode part starts at file offset 0xA00; the 64-bit entry is 0x200 into it.
        var code = GuestProgram.Assemble(64, 0x1000200, a =>
        {
            a.mov(eax, __dword_ptr[rsi + 0x202]);   // "HdrS" from the copied setup header
            a.mov(ebx, __dword_ptr[rsi + 0x228]);   // cmd_line_ptr
            a.mov(ecx, __dword_ptr[rbx]);           // the first four bytes of the command line
            a.movzx(edx, __byte_ptr[rsi + 0x1E8]);  // e820_entries
            a.movzx(edi, __byte_ptr[rsi + 0x210]);  // type_of_loader
            a.hlt();
        });
        code.CopyTo(image, 0xA00 + 0x200);
        var boot = LinuxLoader.LoadBzImage(m, image, new LinuxBootOptions { CommandLine = "root=/dev/vda" });

        var (partition, vcpu) = Start(m, boot);
        using (partition)
        using (vcpu)
        {
            Assert.Equal(VcpuExitReason.Halt, RunUntilExit(vcpu).Reason);
            var r = vcpu.GetGeneralRegisters();
            Assert.Equal(0x53726448UL, r.Rax);
            Assert.Equal(0x20000UL, r.Rbx);
            Assert.Equal(0x746F6F72UL, r.Rcx); // "root"
            Assert.Equal(3UL, r.Rdx);
            Assert.Equal(0xFFUL, r.Rdi);
        }
    }

    [Fact]
    public void Pvh_entry_runs_in_32_bit_mode_with_start_info_in_ebx()
    {
        using var m = GuestMemory.CreateRam(16 << 20);
        var image = SyntheticElf.Build(is64: false, pvhEntry: 0x100000, codeSize: 0x100);
        var code = GuestProgram.Assemble(32, 0x100000, a =>
        {
            a.mov(eax, __dword_ptr[ebx]);        // magic
            a.mov(ecx, __dword_ptr[ebx + 48]);   // memmap_entries
            a.mov(edx, __dword_ptr[ebx + 24]);   // cmdline_paddr (low half)
            a.mov(edx, __dword_ptr[edx]);
            a.hlt();
        });
        code.CopyTo(image, 0x1000); // the segment's file offset: headers and note fit in the first page
        var boot = PvhLoader.Load(m, image, new LinuxBootOptions { CommandLine = "ro quiet" });

        var (partition, vcpu) = Start(m, boot);
        using (partition)
        using (vcpu)
        {
            Assert.Equal(VcpuExitReason.Halt, RunUntilExit(vcpu).Reason);
            var r = vcpu.GetGeneralRegisters();
            Assert.Equal(0x336EC578UL, r.Rax);
            Assert.Equal(3UL, r.Rcx);
            Assert.Equal(0x71206F72UL, r.Rdx); // "ro q"
        }
    }

    [Fact]
    public void Multiboot_entry_gets_the_magic_in_eax_and_memory_sizes_from_ebx()
    {
        using var m = GuestMemory.CreateRam(32 << 20);
        var image = SyntheticElf.Build(is64: false, pvhEntry: null, entry: 0x100000, prefix: SyntheticElf.MultibootHeader(0x3));
        var code = GuestProgram.Assemble(32, 0x100000, a =>
        {
            a.mov(ecx, __dword_ptr[ebx + 4]);    // mem_lower
            a.mov(edx, __dword_ptr[ebx + 8]);    // mem_upper
            a.hlt();
        });
        code.CopyTo(image, 0x1000);
        var boot = MultibootLoader.Load(m, image);

        var (partition, vcpu) = Start(m, boot);
        using (partition)
        using (vcpu)
        {
            Assert.Equal(VcpuExitReason.Halt, RunUntilExit(vcpu).Reason);
            var r = vcpu.GetGeneralRegisters();
            Assert.Equal(0x2BADB002UL, r.Rax);
            Assert.Equal(639UL, r.Rcx);
            Assert.Equal((32UL << 10) - 1024, r.Rdx);
        }
    }
}
