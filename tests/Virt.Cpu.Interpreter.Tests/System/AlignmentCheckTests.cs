using Iced.Intel;
using Virt.Boot;
using Virt.Testing;
using static Iced.Intel.AssemblerRegisters;

namespace Virt.Cpu.Interpreter.Tests;

/// <summary>
/// Alignment checking (SDM Vol. 3, 6.15, interrupt 17): with CR0.AM and RFLAGS.AC set, a data access at CPL 3 that is
/// not aligned to its operand size raises #AC(0); 16-byte SSE and FXSAVE/CMPXCHG16B operands keep their #GP rule;
/// string instructions check each element. The probes run at CPL 3, so KVM on the CI machines (where user code runs
/// on the host processor) is the oracle.
/// </summary>
public sealed class AlignmentCheckTests
{
    private const ulong UserCode = 0x20000;
    private const ulong Handlers = 0x40000;
    private const ulong Resume = 0x41000;
    private const ulong Data = 0x60000;
    private const ulong Results = 0x70000;
    private const ulong Unmapped = 0x200000;
    private const ulong Pd0 = 0x9000 + 0x2000;

    private const byte None = 0, Ac = 17, Gp = 13, Pf = 14;

    /// <summary>
    /// One probe: the instructions, the vector they raise with alignment checking on, what restores the registers they
    /// move, and whether KVM on the CI machines cannot judge it.
    /// </summary>
    private sealed record Probe(string Name, Action<Assembler> Body, byte Expected, Action<Assembler>? Fixup = null, bool NotOnKvm = false, bool AmdChecks = false);

    private static readonly Probe[] Probes =
    [
        new("mov ax,[+1]", a => a.mov(ax, __word_ptr[r14 + 1]), Ac),
        new("mov eax,[+2]", a => a.mov(eax, __dword_ptr[r14 + 2]), Ac),
        new("mov rax,[+4]", a => a.mov(rax, __qword_ptr[r14 + 4]), Ac),
        new("mov al,[+1]", a => a.mov(al, __byte_ptr[r14 + 1]), None),
        new("mov eax,[+4]", a => a.mov(eax, __dword_ptr[r14 + 4]), None),
        new("mov rax,[+8]", a => a.mov(rax, __qword_ptr[r14 + 8]), None),
        new("mov [+3],eax", a => a.mov(__dword_ptr[r14 + 3], eax), Ac),
        new("add [+1],ax", a => a.add(__word_ptr[r14 + 1], ax), Ac),
        new("xchg [+2],eax", a => a.xchg(__dword_ptr[r14 + 2], eax), Ac),
        new("lock add [+1],eax", a => a.@lock.add(__dword_ptr[r14 + 1], eax), Ac),
        new("lock xadd [+6],eax (split)", a => a.@lock.xadd(__dword_ptr[r14 + 6], eax), Ac),
        new("bt [+2],eax", a =>
        {
            a.xor(eax, eax);
            a.bt(__dword_ptr[r14 + 2], eax);
        }, Ac),
        new("cmpxchg8b [+4]", a => a.cmpxchg8b(__qword_ptr[r14 + 4]), Ac),
        new("cmpxchg16b [+8]", a => a.cmpxchg16b(__xmmword_ptr[r14 + 8]), Gp),
        new("movnti [+4],rax", a => a.movnti(__qword_ptr[r14 + 4], rax), Ac),
        new("push rax, rsp-2", a =>
        {
            a.mov(rbp, rsp);
            a.sub(rsp, 2);
            a.push(rax);
        }, Ac, a => a.mov(rsp, rbp)),
        new("push ax", a =>
        {
            a.mov(rbp, rsp);
            a.push(ax);
        }, None, a => a.mov(rsp, rbp)),
        new("pop rax, rsp-1", a =>
        {
            a.mov(rbp, rsp);
            a.sub(rsp, 1);
            a.pop(rax);
        }, Ac, a => a.mov(rsp, rbp)),
        new("call, rsp-4", a =>
        {
            var next = a.CreateLabel();
            a.mov(rbp, rsp);
            a.sub(rsp, 4);
            a.call(next);
            a.Label(ref next);
            a.nop();
        }, Ac, a => a.mov(rsp, rbp)),
        new("movd xmm0,[+2]", a => a.movd(xmm0, __dword_ptr[r14 + 2]), Ac),
        new("movq xmm0,[+4]", a => a.movq(xmm0, __qword_ptr[r14 + 4]), Ac),
        new("movsd xmm0,[+4]", a => a.movsd(xmm0, __qword_ptr[r14 + 4]), Ac),
        new("movlps xmm0,[+4]", a => a.movlps(xmm0, __qword_ptr[r14 + 4]), Ac),
        // Unaligned 16-byte SSE accesses: Intel processors do not check their alignment; AMD's manual lets them raise
        // #AC (AMD64 APM Vol. 4, MOVUPS) and some AMD hosts do, so KVM on an AMD host may answer either way.
        new("movups xmm0,[+1]", a => a.movups(xmm0, __xmmword_ptr[r14 + 1]), None, AmdChecks: true),
        new("movups xmm0,[+8]", a => a.movups(xmm0, __xmmword_ptr[r14 + 8]), None, AmdChecks: true),
        new("movdqu [+4],xmm0", a => a.movdqu(__xmmword_ptr[r14 + 4], xmm0), None, AmdChecks: true),
        new("fld tbyte [+4]", a => a.fld(__tword_ptr[r14 + 4]), Ac, a => a.fninit()),
        new("fld tbyte [+2]", a => a.fld(__tword_ptr[r14 + 2]), Ac, a => a.fninit()),
        // A misaligned FXSAVE raises #GP; with alignment checking on the SDM lets an implementation raise #AC instead,
        // and the interpreter keeps #GP. Under the CI machines' KVM (PVM) a misaligned FXSAVE at CPL 3 does not fault at
        // all (with AC clear too), so KVM cannot judge these two.
        new("fxsave [+1]", a => a.fxsave(__[r14 + 1]), Gp, NotOnKvm: true),
        new("movaps xmm0,[+8]", a => a.movaps(xmm0, __xmmword_ptr[r14 + 8]), Gp),
        new("movaps xmm0,[+1]", a => a.movaps(xmm0, __xmmword_ptr[r14 + 1]), Gp),
        new("fld qword [+4]", a => a.fld(__qword_ptr[r14 + 4]), Ac, a => a.fninit()),
        new("fld dword [+2]", a => a.fld(__dword_ptr[r14 + 2]), Ac, a => a.fninit()),
        new("fld tbyte [+8]", a => a.fld(__tword_ptr[r14 + 8]), None, a => a.fninit()),
        new("fnstsw [+1]", a => a.fnstsw(__word_ptr[r14 + 1]), Ac),
        new("fnstenv [+2]", a => a.fnstenv(__[r14 + 2]), Ac),
        new("fnstenv [+4]", a => a.fnstenv(__[r14 + 4]), None),
        new("fxsave [+8]", a => a.fxsave(__[r14 + 8]), Gp, NotOnKvm: true),
        new("movsw, rsi+1", a =>
        {
            a.lea(rsi, __[r14 + 1]);
            a.lea(rdi, __[r14 + 64]);
            a.movsw();
        }, Ac),
        new("rep movsb x5, rsi+1", a =>
        {
            a.lea(rsi, __[r14 + 1]);
            a.lea(rdi, __[r14 + 67]);
            a.mov(ecx, 5);
            a.rep.movsb();
        }, None),
        new("rep stosd x4, rdi+66", a =>
        {
            a.lea(rdi, __[r14 + 66]);
            a.mov(ecx, 4);
            a.rep.stosd();
        }, Ac),
        new("rep movsq x3, rdi+68", a =>
        {
            a.lea(rsi, __[r14 + 128]);
            a.lea(rdi, __[r14 + 68]);
            a.mov(ecx, 3);
            a.rep.movsq();
        }, Ac),
        new("lodsd, rsi+2", a =>
        {
            a.lea(rsi, __[r14 + 2]);
            a.lodsd();
        }, Ac),
        new("mov eax,[noncanonical+1]", a =>
        {
            a.mov(rsi, 0x8000_0000_0000_0001UL);
            a.mov(eax, __dword_ptr[rsi]);
        }, Gp),
        new("mov eax,[not present]", a =>
        {
            a.mov(esi, (uint)Unmapped);
            a.mov(eax, __dword_ptr[rsi]);
        }, Pf),
        new("mov eax,[not present+1]", a =>
        {
            a.mov(esi, (uint)Unmapped + 1);
            a.mov(eax, __dword_ptr[rsi]);
        }, Ac),
    ];

    /// <summary>
    /// Runs every probe at CPL 3 in 64-bit mode with CR0.AM and RFLAGS.AC as given. Handlers for #GP, #PF and #AC (at
    /// CPL 0) record the vector in the probe's result byte and resume at the next probe (R15); any other exception
    /// halts. Returns the result bytes.
    /// </summary>
    private static byte[] RunProbes(string backend, bool am, bool ac, bool cpl0 = false, bool popfSetsAc = false)
    {
        using var m = new Machine(TestBackends.Create(backend));
        var code = GuestProgram.Assemble(64, UserCode, a =>
        {
            if (popfSetsAc)
            {
                a.pushfq();
                a.or(__dword_ptr[rsp], (int)Virt.X86.Rflags.AlignmentCheck);
                a.popfq();
            }

            a.mov(r14, Data);
            a.mov(ebx, (uint)Results);
            for (int i = 0; i < Probes.Length; i++)
            {
                var next = a.CreateLabel();
                a.mov(r12d, i);
                a.lea(r15, __[next]);
                Probes[i].Body(a);
                a.Label(ref next);
                Probes[i].Fixup?.Invoke(a);
            }

            a.mov(r12d, Probes.Length);
            a.ud2();
        });
        m.Start(StartMode.Long64, code, UserCode);
        for (int v = 0; v < 32; v++)
        {
            ulong at = Handlers + (ulong)(v * 16);
            int vector = v;
            m.Memory.Write(new GuestAddress(at), GuestProgram.Assemble(64, at, a =>
            {
                a.mov(__byte_ptr[rbx + r12], vector);
                if (vector is Gp or Pf or Ac)
                {
                    a.jmp(Resume);
                }
                else
                {
                    a.hlt();
                }
            }));
        }

        // The error code goes; the frame's RIP becomes the next probe's.
        m.Memory.Write(new GuestAddress(Resume), GuestProgram.Assemble(64, Resume, a =>
        {
            a.add(rsp, 8);
            a.mov(__qword_ptr[rsp], r15);
            a.iretq();
        }));
        m.InstallIdt(Handlers);

        // The second 2 MiB page is not present.
        m.Memory.Write(new GuestAddress(Pd0 + 8), 0UL);
        var s = m.Vcpu.GetSpecialRegisters();
        if (!cpl0)
        {
            s.Cs = ProcessorSetup.UserSegment(code: true);
            s.Ss = s.Ds = s.Es = ProcessorSetup.UserSegment(code: false);
        }

        s.Cr0 = am ? s.Cr0 | Virt.X86.Cr0.AlignmentMask : s.Cr0 & ~Virt.X86.Cr0.AlignmentMask;
        s.Cr4 |= ProcessorSetup.Cr4OsFxsr | ProcessorSetup.Cr4OsXmmExcpt;
        m.Vcpu.SetSpecialRegisters(s);
        var r = m.Regs;
        r.Rflags = Machine.FlagsReserved | (ac ? Virt.X86.Rflags.AlignmentCheck : 0);
        m.Vcpu.SetGeneralRegisters(r);
        var exit = m.Run();
        Assert.True(exit.Reason == VcpuExitReason.Halt, exit.ToString());
        var results = new byte[Probes.Length + 1];
        m.Memory.Read(new GuestAddress(Results), results);
        Assert.True(results[Probes.Length] == 6, $"the probes did not all run: the last result is {results[Probes.Length]}");
        return results[..Probes.Length];
    }

    private static void AssertResults(string backend, byte[] results, Func<Probe, byte> expected)
    {
        var wrong = Probes.Select((p, i) => (p, got: results[i]))
            .Where(x => x.got != expected(x.p) && !(backend == "kvm" && x.p.NotOnKvm)
                && !(backend == "kvm" && HostCpu.IsAmd && x.p.AmdChecks && x.got == expected(x.p with { Expected = Ac })))
            .Select(x => $"{x.p.Name}: expected {expected(x.p)}, got {x.got}")
            .ToList();
        Assert.True(wrong.Count == 0, string.Join("\n", wrong));
    }

    /// <summary>Without alignment checking, the probes raise only their #GP and #PF.</summary>
    private static byte Unchecked(Probe p) => p.Expected == Ac ? (p.Name.Contains("not present", StringComparison.Ordinal) ? Pf : None) : p.Expected;

    [Theory]
    [MemberData(nameof(TestBackends.Both), MemberType = typeof(TestBackends))]
    public void Misaligned_data_accesses_at_cpl3_raise_ac_when_cr0_am_and_rflags_ac_are_set(string backend)
    {
        AssertResults(backend, RunProbes(backend, am: true, ac: true), p => p.Expected);
    }

    [Theory]
    [MemberData(nameof(TestBackends.Both), MemberType = typeof(TestBackends))]
    public void Popf_at_cpl3_turns_alignment_checking_on(string backend)
    {
        AssertResults(backend, RunProbes(backend, am: true, ac: false, popfSetsAc: true), p => p.Expected);
    }

    [Fact]
    public void Cpl0_accesses_are_not_checked()
    {
        AssertResults("interpreter", RunProbes("interpreter", am: true, ac: true, cpl0: true), Unchecked);
    }

    [Theory]
    [MemberData(nameof(TestBackends.Both), MemberType = typeof(TestBackends))]
    public void Rflags_ac_clear_turns_alignment_checking_off(string backend)
    {
        AssertResults(backend, RunProbes(backend, am: true, ac: false), Unchecked);
    }

    // Interpreter tiers only: under the CI machines' KVM (PVM) guest user code runs with the host's CR0.AM, which is
    // set, so RFLAGS.AC alone raises #AC there whatever the guest's CR0.AM says.
    [Theory]
    [InlineData("interpreter")]
    [InlineData("jit")]
    public void Cr0_am_clear_turns_alignment_checking_off(string backend)
    {
        AssertResults(backend, RunProbes(backend, am: false, ac: true), Unchecked);
    }
}
