using Iced.Intel;
using Virt.Boot;
using Virt.Testing;
using static Iced.Intel.AssemblerRegisters;

namespace Virt.Cpu.Interpreter.Tests;

/// <summary>
/// The guest's own debugging (SDM Vol. 3, chapter 18): TF single-step, DR0-DR3 breakpoints, DR6/DR7, DR4/DR5 and
/// general detect, and the three ways to raise #DB and #BP from code. Every exception handler copies DR6 to R15 and
/// halts; the #DB handler of the resume tests returns instead.
/// </summary>
public sealed class GuestDebugRegisterTests
{
    private const ulong Handlers = 0x40000;
    private const ulong Data = 0x50000;
    private const ulong Bs = 1UL << 14, Bd = 1UL << 13, Tf = 1UL << 8, Rf = 1UL << 16;

    private sealed record Outcome(VcpuExit Exit, GeneralRegisters Regs, int Vector, ulong[] Frame)
    {
        public ulong Dr6 => Regs.R15;
    }

    private static Outcome Run(string backend, Action<Assembler> code, bool user = false, Action<Machine>? setup = null,
        Action<Assembler>? debugHandler = null, byte gateDpl = 3, int exitsToSkip = 0)
    {
        using var m = new Machine(TestBackends.Create(backend));
        m.Start(StartMode.Long64, GuestProgram.Assemble(64, Machine.CodeAddress, code));
        for (int v = 0; v < 32; v++)
        {
            ulong at = Handlers + (ulong)(v * 16);
            m.Memory.Write(new GuestAddress(at), GuestProgram.Assemble(64, at, v == 1 && debugHandler != null ? debugHandler : a =>
            {
                a.mov(r15, dr6);
                a.hlt();
            }));
        }

        m.InstallIdt(Handlers);
        if (gateDpl != 3)
        {
            foreach (int v in new[] { 1, 3 })
            {
                var at = new GuestAddress(Machine.IdtAddress + (ulong)(v * 16) + 5);
                m.Memory.Write(at, (byte)(0x8E | (gateDpl << 5)));
            }
        }

        if (user)
        {
            var s = m.Vcpu.GetSpecialRegisters();
            s.Cs = ProcessorSetup.UserSegment(code: true);
            s.Ss = s.Ds = s.Es = ProcessorSetup.UserSegment(code: false);
            m.Vcpu.SetSpecialRegisters(s);
        }

        setup?.Invoke(m);
        var exit = m.Run();
        for (int i = 0; i < exitsToSkip; i++)
        {
            Assert.True(exit.Reason == VcpuExitReason.PortIo, exit.ToString());
            exit = m.Run();
        }

        var r = m.Regs;
        int vector = r.Rip > Handlers && r.Rip <= Handlers + (32 * 16) ? (int)((r.Rip - 1 - Handlers) / 16) : -1;
        var frame = new ulong[6];
        for (int i = 0; i < frame.Length; i++)
        {
            frame[i] = m.Memory.Read<ulong>(new GuestAddress(r.Rsp + (ulong)(i * 8)));
        }

        return new Outcome(exit, r, vector, frame);
    }

    /// <summary>PUSHFQ (1 byte), OR qword [rsp], imm32 (8), POPFQ (1).</summary>
    private const ulong SetTfLength = 10;

    /// <summary>MOV r32, moffs64 and MOV moffs64, r32 (A1/A3 with a 64-bit address).</summary>
    private const ulong MoffsLength = 9;

    private static void SetTf(Assembler a)
    {
        a.pushfq();
        a.or(__qword_ptr[rsp], (int)Tf);
        a.popfq();
    }

    [Theory]
    [MemberData(nameof(TestBackends.Both), MemberType = typeof(TestBackends))]
    public void Tf_traps_after_the_instruction_that_follows_the_one_setting_it(string backend)
    {
        // POPF sets TF: the first #DB comes after the next instruction (the NOP), with DR6.BS and TF in the frame.
        var o = Run(backend, a =>
        {
            SetTf(a);
            a.nop();
            a.nop();
            a.hlt();
        }, user: true);
        Assert.Equal(1, o.Vector);
        Assert.Equal(Machine.CodeAddress + SetTfLength + 1, o.Frame[0]);
        Assert.Equal(Bs, o.Dr6 & (Bs | 0xF));
        Assert.Equal(Tf, o.Frame[2] & (Tf | Rf));
    }

    [Theory]
    [MemberData(nameof(TestBackends.Both), MemberType = typeof(TestBackends))]
    public void A_mov_ss_shadow_holds_the_single_step_trap_until_after_the_next_instruction(string backend)
    {
        var o = Run(backend, a =>
        {
            a.mov(eax, ss);
            SetTf(a);
            a.mov(ss, eax);
            a.nop();
            a.nop();
            a.hlt();
        }, user: true);
        Assert.Equal(1, o.Vector);
        Assert.Equal(Machine.CodeAddress + 2 + SetTfLength + 2 + 1, o.Frame[0]); // past MOV SS and the first NOP
        Assert.Equal(Bs, o.Dr6 & Bs);
    }

    [Fact]
    public void An_execute_breakpoint_faults_before_the_instruction_with_rf_in_the_frame()
    {
        const ulong target = Machine.CodeAddress + 2;
        var o = Run("interpreter", a =>
        {
            a.nop();
            a.nop();
            a.mov(r13d, 1);
            a.hlt();
        }, setup: m => m.Vcpu.SetDebugRegisters(new DebugRegisters { Dr0 = target, Dr7 = 1 }));
        Assert.Equal(1, o.Vector);
        Assert.Equal((target, Rf), (o.Frame[0], o.Frame[2] & Rf));
        Assert.Equal(1UL, o.Dr6 & (0xF | Bs));
        Assert.Equal(0UL, o.Regs.R13);
    }

    [Fact]
    public void Iret_with_rf_set_runs_the_breakpointed_instruction_once_and_rf_clears_after_it()
    {
        const ulong target = Machine.CodeAddress + 2;
        var o = Run("interpreter", a =>
        {
            var loop = a.CreateLabel();
            a.nop();
            a.nop();
            a.Label(ref loop);
            a.inc(r13d); // the breakpoint: hit once per pass
            a.cmp(r13d, 3);
            a.jb(loop);
            a.pushfq();
            a.pop(r12);
            a.hlt();
        }, setup: m => m.Vcpu.SetDebugRegisters(new DebugRegisters { Dr0 = target, Dr7 = 1 }), debugHandler: h =>
        {
            h.inc(r14d);
            h.iretq();
        });
        Assert.True(o.Exit.Reason == VcpuExitReason.Halt, o.Exit.ToString());
        Assert.Equal((3UL, 3UL), (o.Regs.R13, o.Regs.R14));
        Assert.Equal(0UL, o.Regs.R12 & Rf);
    }

    [Fact]
    public void A_write_breakpoint_traps_after_the_store_and_ignores_reads()
    {
        // DR1: R/W 01 (write), LEN 11 (4 bytes) at Data + 4.
        var regs = new DebugRegisters { Dr1 = Data + 4, Dr7 = (1UL << 2) | (0b1101UL << 20) };
        var o = Run("interpreter", a =>
        {
            a.mov(eax, __dword_ptr[Data + 4]);
            a.mov(__byte_ptr[Data + 6], 1); // C6 04 25 disp32 imm8
            a.nop();
            a.hlt();
        }, setup: m => m.Vcpu.SetDebugRegisters(regs));
        Assert.Equal(1, o.Vector);
        Assert.Equal(Machine.CodeAddress + MoffsLength + 8, o.Frame[0]);
        Assert.Equal(2UL, o.Dr6 & (0xF | Bs));
        Assert.Equal(0UL, o.Frame[2] & Rf);
    }

    [Fact]
    public void A_read_write_breakpoint_traps_after_a_read()
    {
        // DR3: R/W 11, LEN 10 (8 bytes) at Data + 8.
        var regs = new DebugRegisters { Dr3 = Data + 8, Dr7 = (1UL << 7) | (0b1011UL << 28) };
        var o = Run("interpreter", a =>
        {
            a.mov(eax, __dword_ptr[Data]);
            a.mov(eax, __dword_ptr[Data + 12]);
            a.nop();
            a.hlt();
        }, setup: m => m.Vcpu.SetDebugRegisters(regs));
        Assert.Equal(1, o.Vector);
        Assert.Equal(Machine.CodeAddress + MoffsLength + MoffsLength, o.Frame[0]);
        Assert.Equal(8UL, o.Dr6 & (0xF | Bs));
    }

    [Fact]
    public void An_io_breakpoint_with_cr4_de_traps_after_the_port_access()
    {
        // DR2: R/W 10 (I/O), LEN 00, port 0x80; CR4.DE set by the guest.
        var o = Run("interpreter", a =>
        {
            a.mov(rax, cr4);
            a.or(eax, 1 << 3);
            a.mov(cr4, rax);
            a.mov(eax, 0x80);
            a.mov(dr2, rax);
            a.mov(eax, (1 << 4) | (0b0010 << 24));
            a.mov(dr7, rax);
            a.@out(0x81, al);
            a.@out(0x80, al);
            a.nop();
            a.hlt();
        }, exitsToSkip: 2);
        Assert.Equal(1, o.Vector);
        Assert.Equal(4UL, o.Dr6 & (0xF | Bs));
    }

    [Fact]
    public void General_detect_faults_on_a_debug_register_access_and_clears_gd()
    {
        var o = Run("interpreter", a =>
        {
            a.mov(eax, 1 << 13);
            a.mov(dr7, rax);
            a.mov(rbx, dr0);
            a.hlt();
        });
        Assert.Equal(1, o.Vector);
        Assert.Equal((Machine.CodeAddress + 5 + 3, Rf), (o.Frame[0], o.Frame[2] & Rf));
        Assert.Equal(Bd, o.Dr6 & Bd);
    }

    [Fact]
    public void Dr4_and_dr5_alias_dr6_and_dr7_without_cr4_de()
    {
        var o = Run("interpreter", a =>
        {
            a.mov(eax, 1 << 8); // LE
            a.mov(dr5, rax);
            a.mov(rbx, dr7);
            a.mov(rcx, dr4);
            a.mov(rdx, dr6);
            a.hlt();
        });
        Assert.True(o.Exit.Reason == VcpuExitReason.Halt, o.Exit.ToString());
        Assert.Equal(0x500UL, o.Regs.Rbx);
        Assert.Equal(o.Regs.Rdx, o.Regs.Rcx);
    }

    [Fact]
    public void Dr4_and_dr5_raise_invalid_opcode_with_cr4_de()
    {
        var o = Run("interpreter", a =>
        {
            a.mov(rax, cr4);
            a.or(eax, 1 << 3);
            a.mov(cr4, rax);
            a.mov(rbx, dr4);
            a.hlt();
        });
        Assert.Equal(6, o.Vector);
    }

    // Interpreter only: the CI machines' KVM (PVM) delivers user-mode INT3 itself and skips the gate's DPL check.
    [Fact]
    public void Int3_and_int_3_check_the_gate_dpl_but_icebp_does_not()
    {
        const string backend = "interpreter";
        var int3 = Run(backend, a => a.int3(), user: true, gateDpl: 0);
        Assert.Equal((13, 3UL * 8 + 2), (int3.Vector, int3.Frame[0]));

        var intN = Run(backend, a => a.@int(3), user: true, gateDpl: 0);
        Assert.Equal((13, 3UL * 8 + 2), (intN.Vector, intN.Frame[0]));

        var icebp = Run(backend, a => a.int1(), user: true, gateDpl: 0);
        Assert.Equal((1, Machine.CodeAddress + 1), (icebp.Vector, icebp.Frame[0]));
    }
}
