using Iced.Intel;
using Virt.Boot;
using Virt.Testing;
using Virt.X86;
using static Iced.Intel.AssemblerRegisters;

namespace Virt.Cpu.Interpreter.Tests;

/// <summary>
/// Segment limit and type checks of data accesses in 32-bit protected mode (SDM Vol. 3, 5.3 and 5.5): offsets past
/// the limit (or, in an expand-down segment, at or below it and above its 64 KiB or 4 GiB top), writes to read-only
/// data or code segments, and accesses through a null segment raise #GP(0); through SS, #SS(0).
/// </summary>
public sealed class SegmentLimitTests
{
    private const ulong Gdt = 0x1000;
    private const ulong Idt = 0x3000;
    private const ulong Cells = 0x6000;
    private const ulong Results = 0x6100;
    private const ulong Handlers = 0x40000;
    private const ulong Common = 0x41000;
    private const ulong Limited = 0x20000;

    private const ushort Code = 0x08, Data = 0x10, Lim = 0x18, ReadOnly = 0x20, Down16 = 0x28, Down32 = 0x30, ReadableCode = 0x38, Stack = 0x40;

    private const byte None = 0, Gp = 13, Ss = 12;

    private sealed record Probe(string Name, Action<Assembler> Body, byte Expected);

    private static void Es(Assembler a, ushort sel)
    {
        a.mov(eax, sel);
        a.mov(es, eax);
    }

    private static readonly Probe[] Probes =
    [
        new("lim: dword at 0xffc", a => { Es(a, Lim); a.mov(eax, __dword_ptr.es[0xFFC]); }, None),
        new("lim: dword at 0xffd", a => { Es(a, Lim); a.mov(eax, __dword_ptr.es[0xFFD]); }, Gp),
        new("lim: word at 0xfff", a => { Es(a, Lim); a.mov(ax, __word_ptr.es[0xFFF]); }, Gp),
        new("lim: byte at 0xfff", a => { Es(a, Lim); a.mov(al, __byte_ptr.es[0xFFF]); }, None),
        new("lim: byte store at 0x1000", a => { Es(a, Lim); a.mov(__byte_ptr.es[0x1000], al); }, Gp),
        new("lim: lock add at 0xffe", a => { Es(a, Lim); a.@lock.add(__dword_ptr.es[0xFFE], eax); }, Gp),
        new("lim: fld qword at 0xffc", a => { Es(a, Lim); a.fld(__qword_ptr.es[0xFFC]); }, Gp),
        new("lim: movups at 0xff8", a => { Es(a, Lim); a.movups(xmm0, __xmmword_ptr.es[0xFF8]); }, Gp),
        new("lim: movups at 0xff0", a => { Es(a, Lim); a.movups(xmm0, __xmmword_ptr.es[0xFF0]); }, None),
        new("lim: stosd at 0xffc", a => { Es(a, Lim); a.mov(edi, 0xFFC); a.stosd(); }, None),
        new("lim: stosd at 0xffe", a => { Es(a, Lim); a.mov(edi, 0xFFE); a.stosd(); }, Gp),
        new("lim: rep stosb across the limit", a => { Es(a, Lim); a.mov(edi, 0xFFE); a.mov(ecx, 4); a.rep.stosb(); }, Gp),
        new("lim: movsd to 0xffd", a => { Es(a, Lim); a.mov(esi, 0x5000); a.mov(edi, 0xFFD); a.movsd(); }, Gp),
        new("read-only: load", a => { Es(a, ReadOnly); a.mov(eax, __dword_ptr.es[0]); }, None),
        new("read-only: store", a => { Es(a, ReadOnly); a.mov(__dword_ptr.es[0], eax); }, Gp),
        new("read-only: inc", a => { Es(a, ReadOnly); a.inc(__dword_ptr.es[0]); }, Gp),
        new("expand-down 16: at the limit + 1", a => { Es(a, Down16); a.mov(eax, __dword_ptr.es[0x1000]); }, None),
        new("expand-down 16: at the limit", a => { Es(a, Down16); a.mov(eax, __dword_ptr.es[0xFFF]); }, Gp),
        new("expand-down 16: below the limit", a => { Es(a, Down16); a.mov(eax, __dword_ptr.es[0x10]); }, Gp),
        new("expand-down 16: at 0xfffc", a => { Es(a, Down16); a.mov(eax, __dword_ptr.es[0xFFFC]); }, None),
        new("expand-down 16: past 0xffff", a => { Es(a, Down16); a.mov(eax, __dword_ptr.es[0xFFFD]); }, Gp),
        new("expand-down 32: past 0xffff", a => { Es(a, Down32); a.mov(eax, __dword_ptr.es[0xFFFD]); }, None),
        new("expand-down 32: at the limit", a => { Es(a, Down32); a.mov(al, __byte_ptr.es[0xFFF]); }, Gp),
        new("readable code in es: load", a => { Es(a, ReadableCode); a.mov(eax, __dword_ptr.es[0x5000]); }, None),
        new("readable code in es: store", a => { Es(a, ReadableCode); a.mov(__dword_ptr.es[0x5000], eax); }, Gp),
        new("cs override: load", a => a.mov(eax, __dword_ptr.cs[0x5000]), None),
        new("cs override: store", a => a.mov(__dword_ptr.cs[0x5000], eax), Gp),
        new("null es: load", a => { Es(a, 0); a.mov(eax, __dword_ptr.es[0x5000]); }, Gp),
        new("null es: stosb", a => { Es(a, 0); a.mov(edi, 0x5000); a.stosb(); }, Gp),
        new("ss: load past the limit", a => a.mov(eax, __dword_ptr.ss[0x7FFE]), Ss),
        new("ss: ebp-based load past the limit", a => { a.mov(ebp, 0x8000); a.mov(eax, __dword_ptr[ebp]); }, Ss),
        new("ss: pop across the limit", a => { a.mov(esp, 0x7FFE); a.pop(eax); }, Ss),
        new("ss: push below the limit", a => { a.mov(esp, 0x8000); a.push(eax); }, None),
        new("ds: flat", a => a.mov(eax, __dword_ptr[0x5000]), None),
    ];

    private static ulong Descriptor(ulong @base, uint limit, byte type, bool big = true, bool granularity = false) =>
        SegmentDescriptor.Encode(new SegmentRegister
        {
            Base = @base, Limit = limit, Type = type, Present = true, IsCodeOrData = true, DefaultBig = big, Granularity = granularity,
        });

    /// <summary>
    /// Runs every probe at CPL 0 in 32-bit protected mode with SS = <see cref="Stack"/> (limit 0x7FFF). The #GP and
    /// #SS handlers record the vector in the probe's result byte and resume at the next probe; any other exception
    /// halts. Returns the result bytes.
    /// </summary>
    private static byte[] RunProbes(string backend)
    {
        using var m = new Machine(TestBackends.Create(backend));
        ulong[] gdt =
        [
            0,
            Descriptor(0, 0xFFFFFFFF, 0xB, granularity: true),
            Descriptor(0, 0xFFFFFFFF, 0x3, granularity: true),
            Descriptor(Limited, 0xFFF, 0x3),
            Descriptor(Limited, 0xFFFF, 0x1),
            Descriptor(0, 0xFFF, 0x7, big: false),
            Descriptor(0, 0xFFF, 0x7),
            Descriptor(0, 0xFFFFFFFF, 0xB, granularity: true),
            Descriptor(0, 0x7FFF, 0x3),
        ];
        for (int i = 0; i < gdt.Length; i++)
        {
            m.Memory.Write(new GuestAddress(Gdt + (ulong)(i * 8)), gdt[i]);
        }

        var code = GuestProgram.Assemble(32, Machine.CodeAddress, a =>
        {
            a.mov(eax, Stack);
            a.mov(ss, eax);
            a.mov(esp, 0x7000);
            for (int i = 0; i < Probes.Length; i++)
            {
                // The resume address is that of the JMP after the CALL, which goes on to the next probe.
                var next = a.CreateLabel();
                var body = a.CreateLabel();
                a.mov(__dword_ptr[Cells], i);
                a.call(body);
                a.jmp(next);
                a.Label(ref body);
                a.pop(eax);
                a.mov(__dword_ptr[Cells + 4], eax);
                Probes[i].Body(a);
                a.Label(ref next);
                a.mov(esp, 0x7000);
                a.fninit();
                a.mov(eax, Data);
                a.mov(es, eax);
            }

            a.ud2();
        });
        for (int v = 0; v < 32; v++)
        {
            ulong at = Handlers + (ulong)(v * 16);
            int vector = v;
            m.Memory.Write(new GuestAddress(at), GuestProgram.Assemble(32, at, a =>
            {
                a.mov(ebx, vector);
                if (vector is Gp or Ss)
                {
                    a.jmp(Common);
                }
                else
                {
                    a.hlt();
                }
            }));
            ulong gate = (at & 0xFFFF) | ((ulong)Code << 16) | (0x8EUL << 40) | ((at >> 16) << 48);
            m.Memory.Write(new GuestAddress(Idt + (ulong)(v * 8)), gate);
        }

        // DS may be anything when the fault comes: reload it, record, drop the error code, resume at the next probe.
        m.Memory.Write(new GuestAddress(Common), GuestProgram.Assemble(32, Common, a =>
        {
            a.mov(eax, Data);
            a.mov(ds, eax);
            a.mov(eax, __dword_ptr[Cells]);
            a.mov(__byte_ptr[eax + (int)Results], bl);
            a.add(esp, 4);
            a.mov(eax, __dword_ptr[Cells + 4]);
            a.mov(__dword_ptr[esp], eax);
            a.iretd();
        }));
        m.Start(StartMode.Protected32, code);
        var s = m.Vcpu.GetSpecialRegisters();
        s.Gdt = new DescriptorTable { Base = Gdt, Limit = (ushort)((gdt.Length * 8) - 1) };
        s.Idt = new DescriptorTable { Base = Idt, Limit = (32 * 8) - 1 };
        s.Cs = SegmentDescriptor.Decode(gdt[1], Code);
        s.Ds = s.Es = s.Fs = s.Gs = s.Ss = SegmentDescriptor.Decode(gdt[2], Data);
        m.Vcpu.SetSpecialRegisters(s);
        var exit = m.Run();
        Assert.True(exit.Reason == VcpuExitReason.Halt, exit.ToString());
        Assert.True(m.Regs.Rbx == 6, $"the probes did not all run: vector {m.Regs.Rbx} halted");
        var results = new byte[Probes.Length];
        m.Memory.Read(new GuestAddress(Results), results);
        return results;
    }

    // Interpreter tiers only: the probes run at CPL 0 in 32-bit protected mode, which the CI machines' KVM (PVM)
    // emulates, and its emulator stops at the handlers' IRETD (emulation failure).
    [Theory]
    [InlineData("interpreter")]
    [InlineData("jit")]
    public void Data_accesses_are_checked_against_the_segment_limit_and_type(string backend)
    {
        var results = RunProbes(backend);
        var wrong = Probes.Select((p, i) => (p, got: results[i]))
            .Where(x => x.got != x.p.Expected)
            .Select(x => $"{x.p.Name}: expected {x.p.Expected}, got {x.got}")
            .ToList();
        Assert.True(wrong.Count == 0, string.Join("\n", wrong));
    }
}

/// <summary>
/// The same checks apply in compatibility mode (IA-32e mode, 32-bit code), and not in 64-bit mode: a data access
/// through a null DS raises #GP(0) in the first and is fine in the second. Interpreter only: under the CI machines'
/// KVM (PVM) guest user code runs on the host's own data segments.
/// </summary>
public sealed class CompatibilityModeSegmentTests
{
    private const ulong UserCode = 0x20000;

    private static (int Vector, ulong Error) Run(bool compat)
    {
        using var m = new Machine(new InterpreterHypervisor());
        m.Start(StartMode.Long64, GuestProgram.Assemble(compat ? 32 : 64, UserCode, a =>
        {
            a.mov(eax, __dword_ptr[0x5000]);
            a.ud2();
        }), UserCode);
        m.InstallHaltingIdt();
        var s = m.Vcpu.GetSpecialRegisters();
        s.Cs = ProcessorSetup.UserSegment(code: true, longMode: !compat);
        s.Ss = s.Es = s.Fs = s.Gs = ProcessorSetup.UserSegment(code: false);
        s.Ds = new SegmentRegister { Unusable = true };
        m.Vcpu.SetSpecialRegisters(s);
        Assert.Equal(VcpuExitReason.Halt, m.Run().Reason);
        return (m.HaltedVector, m.Memory.Read<ulong>(new GuestAddress(Machine.KernelStackTop - 48)));
    }

    [Fact]
    public void A_null_ds_faults_in_compatibility_mode_only()
    {
        Assert.Equal((13, 0UL), Run(compat: true));
        Assert.Equal(6, Run(compat: false).Vector);
    }
}
