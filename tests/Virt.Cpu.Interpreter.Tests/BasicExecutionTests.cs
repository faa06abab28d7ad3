using Virt.Boot;
using Virt.Testing;
using static Iced.Intel.AssemblerRegisters;

namespace Virt.Cpu.Interpreter.Tests;

public sealed class BasicExecutionTests
{
    [Fact]
    public void Arithmetic_program_halts_with_expected_registers()
    {
        using var m = Machine.Long64(a =>
        {
            a.mov(rax, 5);
            a.mov(rbx, 7);
            a.imul(rax, rbx);
            a.add(rax, 100);
            a.mov(rcx, 10);
            var loop = a.CreateLabel();
            a.Label(ref loop);
            a.add(rdx, rcx);
            a.dec(rcx);
            a.jnz(loop);
            a.hlt();
        });
        var exit = m.Run();
        Assert.Equal(VcpuExitReason.Halt, exit.Reason);
        var r = m.Regs;
        Assert.Equal(135UL, r.Rax);
        Assert.Equal(55UL, r.Rdx);
        Assert.Equal(0UL, r.Rcx);
    }

    [Fact]
    public void Out_exit_carries_port_and_data_and_in_completes_with_host_data()
    {
        using var m = Machine.Long64(a =>
        {
            a.mov(eax, 0x44332211);
            a.mov(dx, 0x3F8);
            a.@out(dx, eax);
            a.@in(al, 0x60);
            a.mov(r14, rax);
            a.hlt();
        });
        var exit = m.Run();
        Assert.Equal(VcpuExitReason.PortIo, exit.Reason);
        Assert.True(exit.IsWrite);
        Assert.Equal((ushort)0x3F8, exit.Port);
        Assert.Equal(new byte[] { 0x11, 0x22, 0x33, 0x44 }, m.Vcpu.ExitData.ToArray());
        exit = m.Run();
        Assert.Equal(VcpuExitReason.PortIo, exit.Reason);
        Assert.False(exit.IsWrite);
        Assert.Equal((ushort)0x60, exit.Port);
        m.Vcpu.ExitData[0] = 0x5A;
        Assert.Equal(VcpuExitReason.Halt, m.Run().Reason);
        Assert.Equal(0x4433225AUL, m.Regs.R14);
    }

    [Fact]
    public void Mmio_read_modify_write_completes_with_host_data()
    {
        const ulong mmio = 0x1000_0000;
        using var m = Machine.Long64(a =>
        {
            a.mov(ebx, (int)mmio);
            a.mov(__dword_ptr[rbx], unchecked((int)0xDEADBEEF));
            a.mov(eax, __dword_ptr[rbx + 8]);
            a.mov(r13, rax);
            a.add(__qword_ptr[rbx + 16], 5);
            a.hlt();
        });
        var exit = m.Run();
        Assert.Equal(VcpuExitReason.Mmio, exit.Reason);
        Assert.True(exit.IsWrite);
        Assert.Equal(mmio, exit.Address.Value);
        Assert.Equal(4, exit.Size);
        Assert.Equal(new byte[] { 0xEF, 0xBE, 0xAD, 0xDE }, m.Vcpu.ExitData.ToArray());

        exit = m.Run();
        Assert.Equal(VcpuExitReason.Mmio, exit.Reason);
        Assert.False(exit.IsWrite);
        Assert.Equal(mmio + 8, exit.Address.Value);
        BitConverter.TryWriteBytes(m.Vcpu.ExitData, 0x12345678u);

        exit = m.Run();
        Assert.Equal(VcpuExitReason.Mmio, exit.Reason);
        Assert.False(exit.IsWrite);
        Assert.Equal(mmio + 16, exit.Address.Value);
        Assert.Equal(8, exit.Size);
        BitConverter.TryWriteBytes(m.Vcpu.ExitData, 0x100UL);

        exit = m.Run();
        Assert.Equal(VcpuExitReason.Mmio, exit.Reason);
        Assert.True(exit.IsWrite);
        Assert.Equal(0x105UL, BitConverter.ToUInt64(m.Vcpu.ExitData));

        Assert.Equal(VcpuExitReason.Halt, m.Run().Reason);
        Assert.Equal(0x12345678UL, m.Regs.R13);
    }

    [Fact]
    public void A_served_mmio_read_finishes_before_an_exit_request_and_is_not_repeated()
    {
        const ulong mmio = 0x1000_0000;
        using var m = Machine.Long64(a =>
        {
            a.mov(ebx, (int)mmio);
            a.add(__qword_ptr[rbx], 5);
            a.mov(r12, 1);
            a.hlt();
        });
        var exit = m.Run();
        Assert.Equal(VcpuExitReason.Mmio, exit.Reason);
        Assert.False(exit.IsWrite);
        BitConverter.TryWriteBytes(m.Vcpu.ExitData, 0x100UL);

        // A pause (exit request) after the read was served: the instruction goes on to its write, not back to its read.
        m.Vcpu.RequestExit();
        exit = m.Run();
        Assert.Equal(VcpuExitReason.Mmio, exit.Reason);
        Assert.True(exit.IsWrite);
        Assert.Equal(0x105UL, BitConverter.ToUInt64(m.Vcpu.ExitData));
        Assert.Equal(VcpuExitReason.Halt, m.Run().Reason);
        Assert.Equal(1UL, m.Regs.R12);
    }

    [Fact]
    public void Taking_the_state_after_a_served_mmio_read_finishes_the_instruction()
    {
        const ulong mmio = 0x1000_0000;
        using var m = Machine.Long64(a =>
        {
            a.mov(ebx, (int)mmio);
            a.mov(rax, __qword_ptr[rbx]);
            a.mov(r12, 1);
            a.hlt();
        });
        var exit = m.Run();
        Assert.Equal(VcpuExitReason.Mmio, exit.Reason);
        ulong rip = m.Regs.Rip;
        BitConverter.TryWriteBytes(m.Vcpu.ExitData, 0x1234UL);
        var state = m.Vcpu.GetState();
        Assert.Equal(0x1234UL, state.General.Rax);
        Assert.True(state.General.Rip > rip);
        Assert.Equal(VcpuExitReason.Halt, m.Run().Reason);
        Assert.Equal(1UL, m.Regs.R12);
        Assert.Equal(0x1234UL, m.Regs.Rax);
    }

    [Fact]
    public void A_served_mmio_read_finishes_even_when_the_budget_is_spent()
    {
        const ulong mmio = 0x1000_0000;
        using var m = Machine.Long64(a =>
        {
            a.mov(ebx, (int)mmio);
            a.mov(rax, __qword_ptr[rbx]);
            a.mov(r12, 1);
            a.hlt();
        });
        var counting = Assert.IsAssignableFrom<IInstructionCounting>(m.Vcpu);
        Assert.Equal(VcpuExitReason.Mmio, m.Run().Reason);
        BitConverter.TryWriteBytes(m.Vcpu.ExitData, 0x77UL);
        counting.InstructionBudget = 0;
        Assert.Equal(VcpuExitReason.BudgetExhausted, m.Run().Reason);
        Assert.Equal(0x77UL, m.Regs.Rax);
        counting.InstructionBudget = 100;
        Assert.Equal(VcpuExitReason.Halt, m.Run().Reason);
        Assert.Equal(0x77UL, m.Regs.Rax);
    }

    [Fact]
    public void Budget_stops_after_exactly_the_given_number_of_instructions()
    {
        using var m = Machine.Long64(a =>
        {
            var loop = a.CreateLabel();
            a.Label(ref loop);
            a.inc(rax);
            a.jmp(loop);
        });
        var counting = Assert.IsAssignableFrom<IInstructionCounting>(m.Vcpu);
        counting.InstructionBudget = 1001;
        Assert.Equal(VcpuExitReason.BudgetExhausted, m.Vcpu.Run().Reason);
        Assert.Equal(501UL, m.Regs.Rax);
        Assert.Equal(1001, counting.InstructionsRetired);
        counting.InstructionBudget = 1;
        Assert.Equal(VcpuExitReason.BudgetExhausted, m.Vcpu.Run().Reason);
        Assert.Equal(1002, counting.InstructionsRetired);
    }

    [Fact]
    public void Request_exit_from_another_thread_interrupts_an_endless_loop()
    {
        using var m = Machine.Long64(a =>
        {
            var loop = a.CreateLabel();
            a.Label(ref loop);
            a.jmp(loop);
        });
        using var timer = new Timer(_ => m.Vcpu.RequestExit(), null, 50, Timeout.Infinite);
        Assert.Equal(VcpuExitReason.Interrupted, m.Vcpu.Run().Reason);
    }

    [Fact]
    public void Self_modifying_code_executes_the_new_bytes()
    {
        using var m = Machine.Long64(a =>
        {
            var patch = a.CreateLabel();
            a.mov(ecx, 2);
            a.Label(ref patch);
            a.mov(eax, 1); // B8 01 00 00 00: the immediate is patched to 2 on the first pass
            a.lea(rbx, __[patch]);
            a.mov(__byte_ptr[rbx + 1], 2);
            a.add(r8, rax);
            a.dec(ecx);
            a.jnz(patch);
            a.hlt();
        });
        Assert.Equal(VcpuExitReason.Halt, m.Run().Reason);
        Assert.Equal(3UL, m.Regs.R8);
    }

    [Fact]
    public void Host_write_to_cached_code_is_seen_by_the_guest()
    {
        using var m = Machine.Long64(a =>
        {
            a.mov(eax, 1);
            a.hlt();
        });
        Assert.Equal(VcpuExitReason.Halt, m.Run().Reason);
        Assert.Equal(1UL, m.Regs.Rax);
        m.Memory.Write(new GuestAddress(Machine.CodeAddress + 1), (byte)9);
        var r = m.Regs;
        r.Rip = Machine.CodeAddress;
        m.Vcpu.SetGeneralRegisters(r);
        Assert.Equal(VcpuExitReason.Halt, m.Run().Reason);
        Assert.Equal(9UL, m.Regs.Rax);
    }

    [Fact]
    public void Unimplemented_instruction_without_idt_ends_in_shutdown()
    {
        using var m = Machine.Long64(a =>
        {
            a.ud2();
        });
        var exit = m.Run();
        Assert.Equal(VcpuExitReason.Shutdown, exit.Reason);
    }

    [Fact]
    public void Divide_by_zero_is_delivered_through_the_idt_with_the_faulting_rip()
    {
        const ulong handlers = 0x20000;
        using var m = Machine.Long64(a =>
        {
            a.xor(ecx, ecx);
            a.mov(eax, 10);
            a.div(ecx);
            a.hlt();
        });
        // Each handler: mov r15, vector; hlt
        for (int v = 0; v < 32; v++)
        {
            m.Memory.Write(new GuestAddress(handlers + (ulong)(v * 16)), GuestProgram.Assemble(64, handlers + (ulong)(v * 16), a =>
            {
                a.mov(r15d, v);
                a.hlt();
            }));
        }

        m.InstallIdt(handlers);
        Assert.Equal(VcpuExitReason.Halt, m.Run().Reason);
        var r = m.Regs;
        Assert.Equal(0UL, r.R15);
        ulong faultRip = m.Memory.Read<ulong>(new GuestAddress(r.Rsp));
        Assert.Equal(Machine.CodeAddress + 7, faultRip);
    }
}
