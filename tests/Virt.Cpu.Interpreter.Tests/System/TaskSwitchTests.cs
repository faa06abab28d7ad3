using Iced.Intel;
using Virt.Boot;
using Virt.Testing;
using Virt.X86;
using static Iced.Intel.AssemblerRegisters;

namespace Virt.Cpu.Interpreter.Tests;

/// <summary>
/// Hardware task switching in 32-bit protected mode (SDM Vol. 3, chapter 8): CALL and JMP to a TSS and through a task
/// gate, INT n through an IDT task gate, IRET with NT set, 16-bit TSSs, busy bits, NT, the back-link, the saved and
/// restored state, the LDT load, CR0.TS and #TS for a TSS whose limit is too small; #GP for a TSS target in 64-bit
/// mode. Interpreter tiers only: task switches run at CPL 0 in legacy mode, which the CI machines' KVM (PVM) emulates
/// and cannot run (see <see cref="SegmentLimitTests"/>).
/// </summary>
public sealed class TaskSwitchTests
{
    private const ulong Gdt = 0x1000, Idt = 0x3000, Results = 0x6000;
    private const ulong TssA = 0x2000, TssB = 0x2100, TssC = 0x2200, TssD = 0x2300, TssE = 0x2380, Ldt = 0x2400;
    private const ulong CodeA2 = 0x10800, CodeB = 0x11000, CodeC = 0xE000, CodeD = 0x13000, TsHandler = 0x14000;
    private const ushort Code = 0x08, Data = 0x10, SelA = 0x18, SelB = 0x20, GateB = 0x28, SelLdt = 0x30, SelC = 0x38, SelD = 0x40, SelE = 0x48;

    private static ulong Tss(ulong @base, uint limit, byte type) =>
        SegmentDescriptor.Encode(new SegmentRegister { Base = @base, Limit = limit, Type = type, Present = true });

    private static ulong Result(int i) => Results + (ulong)(i * 4);

    private static void Store(Assembler a, int i, AssemblerRegister32 r) => a.mov(__dword_ptr[(uint)Result(i)], r);

    /// <summary>EAX = the GDT access byte (P, DPL, S, type) of <paramref name="sel"/>.</summary>
    private static void AccessByte(Assembler a, ushort sel) => a.movzx(eax, __byte_ptr[(uint)(Gdt + sel + 5)]);

    private static void Write32Tss(Machine m, ulong at, uint eip, uint esp, ushort ldt)
    {
        m.Memory.Write(new GuestAddress(at + 0x20), eip);
        m.Memory.Write(new GuestAddress(at + 0x24), 2u);
        m.Memory.Write(new GuestAddress(at + 0x38), esp);
        ushort[] segs = [Data, Code, Data, Data, Data, Data];
        for (int s = 0; s < 6; s++)
        {
            m.Memory.Write(new GuestAddress(at + 0x48 + (ulong)(s * 4)), (uint)segs[s]);
        }

        m.Memory.Write(new GuestAddress(at + 0x60), (uint)ldt);
    }

    private static readonly ulong[] GdtEntries =
    [
        0,
        SegmentDescriptor.Encode(SegmentRegister.Flat(Code, code: true, longMode: false)),
        SegmentDescriptor.Encode(SegmentRegister.Flat(Data, code: false, longMode: false)),
        Tss(TssA, 0x67, 0xB),
        Tss(TssB, 0x67, 0x9),
        ((ulong)SelB << 16) | (0x85UL << 40),
        SegmentDescriptor.Encode(new SegmentRegister { Base = Ldt, Limit = 0xF, Type = 2, Present = true }),
        Tss(TssC, 0x2B, 0x1),
        Tss(TssD, 0x67, 0x9),
        Tss(TssE, 0x60, 0x9),
    ];

    /// <summary>Starts <paramref name="codeA"/> as task A (TR = A, busy) in 32-bit protected mode over the test's GDT and IDT.</summary>
    private static void Start(Machine m, byte[] codeA)
    {
        m.Start(StartMode.Protected32, codeA, stack: 0x8000);
        var s = m.Vcpu.GetSpecialRegisters();
        s.Gdt = new DescriptorTable { Base = Gdt, Limit = (ushort)((GdtEntries.Length * 8) - 1) };
        s.Idt = new DescriptorTable { Base = Idt, Limit = 0x7FF };
        s.Cs = SegmentDescriptor.Decode(GdtEntries[1], Code);
        s.Ds = s.Es = s.Fs = s.Gs = s.Ss = SegmentDescriptor.Decode(GdtEntries[2], Data);
        s.Tr = SegmentDescriptor.Decode(GdtEntries[3], SelA);
        s.Cr0 &= ~Cr0.TaskSwitched;
        m.Vcpu.SetSpecialRegisters(s);
    }

    private static uint[] Run(string backend)
    {
        using var m = new Machine(TestBackends.Create(backend));
        var gdt = GdtEntries;
        for (int i = 0; i < gdt.Length; i++)
        {
            m.Memory.Write(new GuestAddress(Gdt + (ulong)(i * 8)), gdt[i]);
        }

        Write32Tss(m, TssB, (uint)CodeB, 0x9000, SelLdt);
        Write32Tss(m, TssD, (uint)CodeD, 0xB000, 0);

        // The 16-bit TSS: IP, FLAGS, SP, then ES, CS, SS, DS and no LDT.
        m.Memory.Write(new GuestAddress(TssC + 0x0E), (ushort)CodeC);
        m.Memory.Write(new GuestAddress(TssC + 0x10), (ushort)2);
        m.Memory.Write(new GuestAddress(TssC + 0x1A), (ushort)0xA000);
        ushort[] segs16 = [Data, Code, Data, Data];
        for (int k = 0; k < 4; k++)
        {
            m.Memory.Write(new GuestAddress(TssC + 0x22 + (ulong)(k * 2)), segs16[k]);
        }

        // IDT: vector 0x40 is a task gate to TSS D, #TS (10) an interrupt gate.
        m.Memory.Write(new GuestAddress(Idt + (0x40 * 8)), ((ulong)SelD << 16) | (0x85UL << 40));
        m.Memory.Write(new GuestAddress(Idt + (10 * 8)), (TsHandler & 0xFFFF) | ((ulong)Code << 16) | (0x8EUL << 40) | ((TsHandler >> 16) << 48));

        var codeA = GuestProgram.Assemble(32, Machine.CodeAddress, a =>
        {
            a.mov(eax, 0x1111);
            a.call(SelB, 0);
            Store(a, 6, eax);
            a.str(ax);
            a.movzx(eax, ax);
            Store(a, 7, eax);
            a.pushfd();
            a.pop(eax);
            Store(a, 8, eax);
            AccessByte(a, SelB);
            Store(a, 9, eax);
            AccessByte(a, SelA);
            Store(a, 10, eax);
            a.smsw(eax);
            Store(a, 11, eax);
            a.mov(eax, 0x2222);
            a.@int(0x40);
            Store(a, 15, eax);
            a.call(SelC, 0);
            a.mov(eax, 0x3333);
            Store(a, 18, eax);
            a.jmp(SelE, 0);
            a.hlt();
        });
        m.Memory.Write(new GuestAddress(CodeA2), GuestProgram.Assemble(32, CodeA2, a =>
        {
            a.jmp(GateB, 0);
            a.hlt();
        }));
        m.Memory.Write(new GuestAddress(CodeB), GuestProgram.Assemble(32, CodeB, a =>
        {
            a.str(ax);
            a.movzx(eax, ax);
            Store(a, 0, eax);
            a.pushfd();
            a.pop(eax);
            Store(a, 1, eax);
            a.mov(eax, __dword_ptr[(uint)TssB]);
            Store(a, 2, eax);
            a.sldt(ax);
            a.movzx(eax, ax);
            Store(a, 3, eax);
            AccessByte(a, SelA);
            Store(a, 4, eax);
            AccessByte(a, SelB);
            Store(a, 5, eax);
            a.mov(eax, 0x5555);
            a.iretd();

            // Entered again by A's JMP through the task gate.
            a.pushfd();
            a.pop(eax);
            Store(a, 20, eax);
            AccessByte(a, SelA);
            Store(a, 21, eax);
            AccessByte(a, SelB);
            Store(a, 22, eax);
            a.hlt();
        }));
        m.Memory.Write(new GuestAddress(CodeC), GuestProgram.Assemble(32, CodeC, a =>
        {
            a.str(ax);
            a.movzx(eax, ax);
            Store(a, 16, eax);
            a.movzx(eax, __word_ptr[(uint)TssC]);
            Store(a, 17, eax);
            a.iretd();
        }));
        m.Memory.Write(new GuestAddress(CodeD), GuestProgram.Assemble(32, CodeD, a =>
        {
            a.str(ax);
            a.movzx(eax, ax);
            Store(a, 12, eax);
            a.pushfd();
            a.pop(eax);
            Store(a, 13, eax);
            a.mov(eax, __dword_ptr[(uint)TssD]);
            Store(a, 14, eax);
            a.iretd();
        }));
        m.Memory.Write(new GuestAddress(TsHandler), GuestProgram.Assemble(32, TsHandler, a =>
        {
            a.pop(eax);
            Store(a, 19, eax);
            a.mov(__dword_ptr[esp], (uint)CodeA2);
            a.iretd();
        }));

        Start(m, codeA);
        var exit = m.Run();
        Assert.True(exit.Reason == VcpuExitReason.Halt, exit.ToString());
        Assert.InRange(m.Regs.Rip, CodeB, CodeB + 0x100);
        var results = new uint[23];
        for (int i = 0; i < results.Length; i++)
        {
            results[i] = m.Memory.Read<uint>(new GuestAddress(Result(i)));
        }

        return results;
    }

    [Theory]
    [InlineData("interpreter")]
    [InlineData("jit")]
    public void Call_iret_int_and_jmp_switch_tasks_with_busy_bits_nt_and_back_link(string backend)
    {
        var r = Run(backend);
        const uint Nt = 1 << 14;

        // CALL to TSS B: B runs with NT set, back-link A, its LDT, A and B busy.
        Assert.Equal((uint)SelB, r[0]);
        Assert.NotEqual(0u, r[1] & Nt);
        Assert.Equal((uint)SelA, r[2]);
        Assert.Equal((uint)SelLdt, r[3]);
        Assert.Equal((0x8Bu, 0x8Bu), (r[4], r[5]));

        // IRET back: A's registers (EAX), TR and flags restored, B no longer busy, CR0.TS set.
        Assert.Equal(0x1111u, r[6]);
        Assert.Equal((uint)SelA, r[7]);
        Assert.Equal(0u, r[8] & Nt);
        Assert.Equal((0x89u, 0x8Bu), (r[9], r[10]));
        Assert.NotEqual(0u, r[11] & (uint)Cr0.TaskSwitched);

        // INT 0x40 through the IDT task gate to D and IRET back.
        Assert.Equal((uint)SelD, r[12]);
        Assert.NotEqual(0u, r[13] & Nt);
        Assert.Equal((uint)SelA, r[14]);
        Assert.Equal(0x2222u, r[15]);

        // CALL to the 16-bit TSS C and back.
        Assert.Equal((uint)SelC, r[16]);
        Assert.Equal((uint)SelA, r[17]);
        Assert.Equal(0x3333u, r[18]);

        // JMP to TSS E, whose limit is below 0x67: #TS(E).
        Assert.Equal((uint)SelE, r[19]);

        // JMP through the task gate to B: B resumes after its IRET with NT clear; A is no longer busy.
        Assert.Equal(0u, r[20] & Nt);
        Assert.Equal((0x89u, 0x8Bu), (r[21], r[22]));
    }

    /// <summary>Runs <paramref name="emit"/> as task A with #GP (13) and #TS (10) handlers that store vector and error code and halt.</summary>
    private static (uint Vector, uint Error) Fault(string backend, Action<Assembler> emit)
    {
        using var m = new Machine(TestBackends.Create(backend));
        for (int i = 0; i < GdtEntries.Length; i++)
        {
            m.Memory.Write(new GuestAddress(Gdt + (ulong)(i * 8)), GdtEntries[i]);
        }

        foreach (int v in new[] { 10, 13 })
        {
            ulong at = TsHandler + (ulong)(v * 16);
            int vector = v;
            m.Memory.Write(new GuestAddress(at), GuestProgram.Assemble(32, at, a =>
            {
                a.pop(eax);
                Store(a, 1, eax);
                a.mov(__dword_ptr[(uint)Result(0)], vector);
                a.hlt();
            }));
            m.Memory.Write(new GuestAddress(Idt + (ulong)(v * 8)), (at & 0xFFFF) | ((ulong)Code << 16) | (0x8EUL << 40) | ((at >> 16) << 48));
        }

        Start(m, GuestProgram.Assemble(32, Machine.CodeAddress, emit));
        var exit = m.Run();
        Assert.True(exit.Reason == VcpuExitReason.Halt, exit.ToString());
        return (m.Memory.Read<uint>(new GuestAddress(Result(0))), m.Memory.Read<uint>(new GuestAddress(Result(1))));
    }

    [Theory]
    [InlineData("interpreter")]
    [InlineData("jit")]
    public void Call_to_a_busy_tss_raises_gp_with_its_selector(string backend)
    {
        Assert.Equal((13u, (uint)SelA), Fault(backend, a => a.call(SelA, 0)));
    }

    [Theory]
    [InlineData("interpreter")]
    [InlineData("jit")]
    public void Iret_with_nt_to_a_back_link_that_is_not_busy_raises_ts(string backend)
    {
        Assert.Equal((10u, (uint)SelB), Fault(backend, a =>
        {
            a.mov(__word_ptr[(uint)TssA], SelB);
            a.pushfd();
            a.or(__dword_ptr[esp], 1 << 14);
            a.popfd();
            a.iretd();
        }));
    }

    [Theory]
    [MemberData(nameof(TestBackends.Both), MemberType = typeof(TestBackends))]
    public void Iretq_with_nt_set_in_64_bit_mode_raises_gp(string backend)
    {
        using var m = Machine.Long64(a =>
        {
            a.pushfq();
            a.or(__dword_ptr[rsp], 1 << 14);
            a.popfq();
            a.mov(eax, ProcessorSetup.KernelData);
            a.push(rax);
            a.push(0x7000);
            a.push(2);
            a.push(ProcessorSetup.KernelCode64);
            a.push(0x10100);
            a.iretq();
        }, hypervisor: TestBackends.Create(backend));
        m.InstallHaltingIdt();
        var exit = m.Run();
        Assert.True(exit.Reason == VcpuExitReason.Halt, exit.ToString());
        Assert.Equal(13, m.HaltedVector);
        Assert.Equal(0UL, m.Memory.Read<ulong>(new GuestAddress(m.Regs.Rsp)));
    }

    [Fact]
    public void Far_jump_to_a_tss_in_64_bit_mode_raises_gp()
    {
        using var m = Machine.Long64(a =>
        {
            a.db(0xFF, 0x2C, 0x25, 0x00, 0x00, 0x02, 0x00); // JMP FAR m16:32 [0x20000]
        });
        m.Memory.Write(new GuestAddress(0x20000), 0u);
        m.Memory.Write(new GuestAddress(0x20004), ProcessorSetup.TssSelector);
        m.InstallHaltingIdt();
        Assert.Equal(VcpuExitReason.Halt, m.Run().Reason);
        Assert.Equal(13, m.HaltedVector);
        Assert.Equal((ulong)ProcessorSetup.TssSelector, m.Memory.Read<ulong>(new GuestAddress(m.Regs.Rsp)));
    }
}
