using Iced.Intel;
using Virt.Boot;
using Virt.Cpu.Interpreter.Tests.Differential;
using Virt.Testing;
using static Iced.Intel.AssemblerRegisters;

namespace Virt.Cpu.Interpreter.Tests;

public sealed class SystemTests
{
    public static TheoryData<string> Backends() => TestBackends.Both();

    private static IHypervisor Backend(string name) => TestBackends.Create(name);

    private static SequenceResult RunUser(string backend, Action<Assembler> emit)
    {
        using var vm = new DiffVm(Backend(backend));
        var code = GuestProgram.Assemble(64, DiffVm.CodeAddress, a =>
        {
            emit(a);
            a.hlt();
        });
        var regs = new GeneralRegisters { Rip = DiffVm.CodeAddress, Rsp = DiffVm.ScratchAddress + 0x1000, Rflags = 0x202, Rbx = DiffVm.ScratchAddress };
        return vm.Run(code, ulong.MaxValue, regs, new byte[DiffVm.ScratchSize]);
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public void Page_fault_error_codes_report_present_write_user_and_fetch(string backend)
    {
        const ulong notPresent = DiffVm.ScratchAddress + 0x3000;
        const ulong readOnly = DiffVm.ScratchAddress + 0x2000;

        var r = RunUser(backend, a => a.mov(rax, __qword_ptr[notPresent]));
        Assert.Equal((14, 0x4UL, notPresent), (r.Vector, r.ErrorCode, r.Cr2));

        r = RunUser(backend, a => a.mov(__qword_ptr[notPresent + 8], rax));
        Assert.Equal((14, 0x6UL, notPresent + 8), (r.Vector, r.ErrorCode, r.Cr2));

        r = RunUser(backend, a => a.mov(__dword_ptr[readOnly], eax));
        Assert.Equal((14, 0x7UL, readOnly), (r.Vector, r.ErrorCode, r.Cr2));

        r = RunUser(backend, a => a.add(__byte_ptr[readOnly + 3], 1));
        Assert.Equal((14, 0x7UL, readOnly + 3), (r.Vector, r.ErrorCode, r.Cr2));

        r = RunUser(backend, a => a.mov(rax, __qword_ptr[DiffVm.IdtAddress]));
        Assert.Equal((14, 0x5UL, DiffVm.IdtAddress), (r.Vector, r.ErrorCode, r.Cr2));

        r = RunUser(backend, a =>
        {
            a.mov(eax, (int)notPresent);
            a.jmp(rax);
        });
        Assert.Equal((14, 0x14UL, notPresent), (r.Vector, r.ErrorCode, r.Cr2));
        Assert.Equal(notPresent, r.Rip);

        // A write that straddles into the read-only page faults on the second page and writes nothing.
        r = RunUser(backend, a =>
        {
            a.mov(rax, -1L);
            a.mov(__qword_ptr[readOnly - 4], rax);
        });
        Assert.Equal((14, 0x7UL, readOnly), (r.Vector, r.ErrorCode, r.Cr2));
        Assert.Equal(0u, BitConverter.ToUInt32(r.Scratch, 0x2000 - 4));
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public void Privileged_instructions_at_cpl3_raise_general_protection(string backend)
    {
        foreach (Action<Assembler> emit in new Action<Assembler>[]
        {
            a => a.cli(),
            a => a.mov(rax, cr3),
            a => a.wrmsr(),
            a => a.invlpg(__[rbx]),
            a => a.@out(0x80, al),
        })
        {
            var r = RunUser(backend, emit);
            Assert.Equal((13, 0UL, DiffVm.CodeAddress), (r.Vector, r.ErrorCode, r.Rip));
        }

        var ud = RunUser(backend, a => a.ud2());
        Assert.Equal(6, ud.Vector);
        var de = RunUser(backend, a =>
        {
            a.xor(ecx, ecx);
            a.div(rcx);
        });
        Assert.Equal(0, de.Vector);
    }

    [Fact]
    public void Int3_from_user_mode_switches_to_the_ist_stack_with_a_full_frame()
    {
        const ulong handlers = 0x20000;
        const ulong istTop = 0x30008; // misaligned on purpose: the CPU aligns it down to 16
        const ulong userCode = 0x40000;
        const ulong userStack = 0x50000;
        using var m = new Machine();
        m.Start(StartMode.Long64, GuestProgram.Assemble(64, userCode, a =>
        {
            a.mov(eax, 0x1234);
            a.int3();
            a.hlt();
        }), userCode);
        for (int v = 0; v < 32; v++)
        {
            m.Memory.Write(new GuestAddress(handlers + (ulong)(v * 16)), GuestProgram.Assemble(64, handlers + (ulong)(v * 16), a => a.hlt()));
        }

        m.InstallIdt(handlers, ist: 1);
        m.Memory.Write(new GuestAddress(0x580 + 0x24), istTop); // TSS.IST1
        var s = m.Vcpu.GetSpecialRegisters();
        s.Cs = ProcessorSetup.UserSegment(code: true);
        s.Ss = s.Ds = s.Es = ProcessorSetup.UserSegment(code: false);
        m.Vcpu.SetSpecialRegisters(s);
        m.Vcpu.SetGeneralRegisters(new GeneralRegisters { Rip = userCode, Rsp = userStack, Rflags = 0x202 });

        Assert.Equal(VcpuExitReason.Halt, m.Run().Reason);
        var r = m.Regs;
        Assert.Equal(handlers + (3 * 16) + 1, r.Rip);
        Assert.Equal(0x30000UL - 40, r.Rsp);
        ulong F(int i) => m.Memory.Read<ulong>(new GuestAddress(r.Rsp + (ulong)(i * 8)));
        Assert.Equal(userCode + 6, F(0)); // return RIP after INT3
        Assert.Equal((ulong)ProcessorSetup.UserCode64, F(1));
        Assert.Equal(0x202UL, F(2) & 0x202);
        Assert.Equal(userStack, F(3));
        Assert.Equal((ulong)ProcessorSetup.UserData, F(4));
        var sr = m.Vcpu.GetSpecialRegisters();
        Assert.Equal(ProcessorSetup.KernelCode64, sr.Cs.Selector);
        Assert.Equal(0UL, r.Rflags & 0x200); // interrupt gate clears IF
    }

    [Fact]
    public void Syscall_and_sysret_switch_privilege_and_save_the_return_state()
    {
        const ulong user = 0x40000;
        const ulong kernelEntry = 0x20000;
        using var m = new Machine();
        // CPL 0 start: SYSRET into user code, which makes a system call.
        m.Start(StartMode.Long64, GuestProgram.Assemble(64, Machine.CodeAddress, a =>
        {
            a.mov(ecx, (int)user);
            a.mov(r11d, 0x202);
            a.sysretq();
        }));
        m.Memory.Write(new GuestAddress(user), GuestProgram.Assemble(64, user, a =>
        {
            a.mov(r12w, cs);
            a.mov(eax, 60);
            a.syscall();
            a.hlt();
        }));
        m.Memory.Write(new GuestAddress(kernelEntry), GuestProgram.Assemble(64, kernelEntry, a =>
        {
            a.mov(r13w, cs);
            a.mov(r14w, ss);
            a.hlt();
        }));
        m.Vcpu.SetMsrs([
            new MsrEntry(MsrIndex.Star, ((ulong)0x20 << 48) | ((ulong)ProcessorSetup.KernelCode64 << 32)),
            new MsrEntry(MsrIndex.Lstar, kernelEntry),
            new MsrEntry(MsrIndex.Fmask, 0x200),
        ]);

        Assert.Equal(VcpuExitReason.Halt, m.Run().Reason);
        var r = m.Regs;
        Assert.Equal((ulong)ProcessorSetup.UserCode64, r.R12 & 0xFFFF);
        Assert.Equal((ulong)ProcessorSetup.KernelCode64, r.R13 & 0xFFFF);
        Assert.Equal((ulong)ProcessorSetup.KernelData, r.R14 & 0xFFFF);
        Assert.Equal(user + 11, r.Rcx); // after the SYSCALL
        Assert.Equal(0x202UL, r.R11 & 0x202);
        Assert.Equal(0UL, r.Rflags & 0x200); // FMASK cleared IF
        Assert.Equal(kernelEntry + 9, r.Rip);
    }

    [Fact]
    public void Misc_enable_after_reset_has_fast_strings_and_no_branch_trace_or_pebs()
    {
        using var m = Machine.Long64(a =>
        {
            a.mov(ecx, 0x1A0);
            a.rdmsr();
            a.hlt();
        });

        var exit = m.Run();

        Assert.Equal(VcpuExitReason.Halt, exit.Reason);
        Assert.Equal(0x1801UL, m.Regs.Rax);
        Assert.Equal(0UL, m.Regs.Rdx);
    }

    [Fact]
    public void Real_mode_boot_switches_to_protected_then_long_then_compatibility_mode()
    {
        using var m = new Machine();
        // Tables for long mode (GDT, TSS, identity page tables), then start in real mode.
        m.Vcpu.SetSpecialRegisters(ProcessorSetup.Prepare(m.Memory, m.Vcpu.GetSpecialRegisters(), StartMode.Long64));
        m.Vcpu.SetSpecialRegisters(ProcessorSetup.Prepare(m.Memory, m.Vcpu.GetSpecialRegisters(), StartMode.Real));
        m.Memory.Write(new GuestAddress(0x7F00), (ushort)0x47);
        m.Memory.Write(new GuestAddress(0x7F02), 0x500u);
        var real = new List<byte>(GuestProgram.Assemble(16, 0x8000, a =>
        {
            a.cli();
            a.lgdt(__[0x7F00]);
            a.mov(eax, cr0);
            a.or(eax, 1);
            a.mov(cr0, eax);
        }));
        real.AddRange([0x66, 0xEA, 0x00, 0x81, 0x00, 0x00, 0x18, 0x00]); // jmp far 0x18:0x8100
        m.Memory.Write(new GuestAddress(0x8000), real.ToArray());

        var prot = new List<byte>(GuestProgram.Assemble(32, 0x8100, a =>
        {
            a.mov(ax, 0x10);
            a.mov(ds, ax);
            a.mov(ss, ax);
            a.mov(esp, 0x7000);
            a.mov(eax, cr4);
            a.or(eax, 0x20);
            a.mov(cr4, eax);
            a.mov(eax, 0x9000);
            a.mov(cr3, eax);
            a.mov(ecx, unchecked((int)0xC0000080));
            a.rdmsr();
            a.or(eax, 0x100);
            a.wrmsr();
            a.mov(eax, cr0);
            a.or(eax, unchecked((int)0x80000000));
            a.mov(cr0, eax);
        }));
        prot.AddRange([0xEA, 0x00, 0x82, 0x00, 0x00, 0x08, 0x00]); // jmp far 0x08:0x8200
        m.Memory.Write(new GuestAddress(0x8100), prot.ToArray());

        m.Memory.Write(new GuestAddress(0x8200), GuestProgram.Assemble(64, 0x8200, a =>
        {
            a.mov(r15, 0x1_0000_0064L);
            a.push(0x18);
            a.push(0x8300);
            a.db(0x48, 0xCB); // retfq
        }));
        m.Memory.Write(new GuestAddress(0x8300), GuestProgram.Assemble(32, 0x8300, a =>
        {
            a.mov(eax, 0x32);
            a.hlt();
        }));
        m.Vcpu.SetGeneralRegisters(new GeneralRegisters { Rip = 0x8000, Rsp = 0x7000, Rflags = 2 });

        var exit = m.Run();
        Assert.Equal(VcpuExitReason.Halt, exit.Reason);
        var s = m.Vcpu.GetSpecialRegisters();
        var r = m.Regs;
        Assert.Equal(0x1_0000_0064UL, r.R15);
        Assert.Equal(0x32UL, r.Rax);
        Assert.Equal(ProcessorSetup.KernelCode32, s.Cs.Selector);
        Assert.NotEqual(0UL, s.Efer & ProcessorSetup.EferLongModeActive);
        Assert.False(s.Cs.Long);
    }

    [Fact]
    public void Injected_interrupt_waits_for_sti_and_its_shadow()
    {
        const ulong handlers = 0x20000;
        using var m = Machine.Long64(a =>
        {
            a.mov(eax, 1);
            a.sti();
            a.mov(ebx, 2); // runs in the STI shadow, before the interrupt
            a.mov(ecx, 3);
            a.hlt();
        });
        for (int v = 0; v < 64; v++)
        {
            m.Memory.Write(new GuestAddress(handlers + (ulong)(v * 16)), GuestProgram.Assemble(64, handlers + (ulong)(v * 16), a =>
            {
                a.mov(r15d, v);
                a.hlt();
            }));
        }

        m.InstallIdt(handlers);
        // Extend the IDT to vector 0x30 (InstallIdt fills 0-31).
        ulong target = handlers + (0x30 * 16);
        ulong low = (target & 0xFFFF) | ((ulong)ProcessorSetup.KernelCode64 << 16) | (0x8EUL << 40) | (((target >> 16) & 0xFFFF) << 48);
        m.Memory.Write(new GuestAddress(Machine.IdtAddress + (0x30 * 16)), low);
        m.Memory.Write(new GuestAddress(Machine.IdtAddress + (0x30 * 16) + 8), 0UL);
        var s = m.Vcpu.GetSpecialRegisters();
        s.Idt = new DescriptorTable { Base = Machine.IdtAddress, Limit = (0x31 * 16) - 1 };
        m.Vcpu.SetSpecialRegisters(s);

        Assert.True(m.Vcpu.TryInjectInterrupt(0x30));
        Assert.False(m.Vcpu.TryInjectInterrupt(0x31));
        Assert.Equal(VcpuExitReason.Halt, m.Run().Reason);
        var r = m.Regs;
        Assert.Equal(0x30UL, r.R15);
        Assert.Equal(2UL, r.Rbx);
        Assert.NotEqual(3UL, r.Rcx);
    }
}
