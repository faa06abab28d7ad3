using Iced.Intel;
using Virt.Testing;
using static Iced.Intel.AssemblerRegisters;

namespace Virt.Cpu.Interpreter.Tests.Differential;

/// <summary>
/// REP STOS/MOVS against KVM: page crossings, overlapping copies (which replicate a pattern on hardware), element
/// sizes, the direction flag, and a fault part-way (the scratch area ends in a read-only page), checking the
/// registers, RCX/RSI/RDI progress, CR2 and every scratch byte.
/// </summary>
public sealed class RepStringDifferentialTests
{
    private const ulong S = DiffVm.ScratchAddress; // two writable pages, then a read-only one

    public static TheoryData<string> Cases() => new(Sequences.Keys);

    private static readonly Dictionary<string, Action<Assembler>> Sequences = new()
    {
        ["stosb across a page"] = a => { a.mov(rdi, S + 0x10); a.mov(ecx, 0x1FE0); a.mov(al, 0x5A); a.rep.stosb(); },
        ["stosq across a page"] = a => { a.mov(rdi, S + 8); a.mov(ecx, 0x3F0); a.mov(rax, 0x1122334455667788); a.rep.stosq(); },
        ["stosw unaligned"] = a => { a.mov(rdi, S + 0xFFF); a.mov(ecx, 0x300); a.mov(eax, 0xBEEF); a.rep.stosw(); },
        ["stosd into the read-only page"] = a => { a.mov(rdi, S + 0x1F00); a.mov(ecx, 0x100); a.mov(eax, 0xCAFEF00D); a.rep.stosd(); },
        ["stosb with rcx 0"] = a => { a.mov(rdi, S); a.xor(ecx, ecx); a.mov(al, 1); a.rep.stosb(); },
        ["movsb apart"] = a => { a.mov(rsi, S); a.mov(rdi, S + 0x1000); a.mov(ecx, 0x900); a.rep.movsb(); },
        ["movsq across pages"] = a => { a.mov(rsi, S + 0xF08); a.mov(rdi, S + 0x1010); a.mov(ecx, 0x1C0); a.rep.movsq(); },
        ["movsb overlapping forward"] = a => { a.mov(rsi, S + 0x100); a.mov(rdi, S + 0x101); a.mov(ecx, 0x200); a.rep.movsb(); },
        ["movsq overlapping forward"] = a => { a.mov(rsi, S + 0x200); a.mov(rdi, S + 0x210); a.mov(ecx, 0x40); a.rep.movsq(); },
        ["movsb overlapping backward"] = a => { a.mov(rsi, S + 0x301); a.mov(rdi, S + 0x300); a.mov(ecx, 0x200); a.rep.movsb(); },
        ["movsb from the read-only page"] = a => { a.mov(rsi, S + 0x2000); a.mov(rdi, S + 0x80); a.mov(ecx, 0x400); a.rep.movsb(); },
        ["movsd into the read-only page"] = a => { a.mov(rsi, S); a.mov(rdi, S + 0x1F80); a.mov(ecx, 0x80); a.rep.movsd(); },
        ["movsq overlapping, source above"] = a => { a.mov(rsi, S + 0x408); a.mov(rdi, S + 0x400); a.mov(ecx, 0x100); a.rep.movsq(); },
        ["movsw overlapping, source one byte above"] = a => { a.mov(rsi, S + 0x601); a.mov(rdi, S + 0x600); a.mov(ecx, 0x180); a.rep.movsw(); },
        ["movsq overlapping by 12 bytes"] = a => { a.mov(rsi, S + 0x500); a.mov(rdi, S + 0x50C); a.mov(ecx, 0x90); a.rep.movsq(); },
        ["movsd overlapping by half an element"] = a => { a.mov(rsi, S + 0x700); a.mov(rdi, S + 0x702); a.mov(ecx, 0x100); a.rep.movsd(); },
        ["movsb overlapping by 3 across a page"] = a => { a.mov(rsi, S + 0xE00); a.mov(rdi, S + 0xE03); a.mov(ecx, 0x400); a.rep.movsb(); },
        ["movsb shifting down across a page"] = a => { a.mov(rsi, S + 0xF10); a.mov(rdi, S + 0xE05); a.mov(ecx, 0x600); a.rep.movsb(); },
        ["movsb downwards"] = a => { a.std(); a.mov(rsi, S + 0x1800); a.mov(rdi, S + 0x1900); a.mov(ecx, 0x300); a.rep.movsb(); a.cld(); },
        ["movsq downwards overlapping, destination above"] = a => { a.std(); a.mov(rsi, S + 0x1A00); a.mov(rdi, S + 0x1A08); a.mov(ecx, 0x1C0); a.rep.movsq(); a.cld(); },
        ["movsb downwards overlapping by 5 across a page"] = a => { a.std(); a.mov(rsi, S + 0x1105); a.mov(rdi, S + 0x1100); a.mov(ecx, 0x300); a.rep.movsb(); a.cld(); },
        ["movsd downwards overlapping by half an element"] = a => { a.std(); a.mov(rsi, S + 0x1302); a.mov(rdi, S + 0x1300); a.mov(ecx, 0x80); a.rep.movsd(); a.cld(); },
        ["movsq downwards from the read-only page"] = a => { a.std(); a.mov(rsi, S + 0x2100); a.mov(rdi, S + 0x1F00); a.mov(ecx, 0x40); a.rep.movsq(); a.cld(); },
        ["stosd downwards across a page"] = a => { a.std(); a.mov(rdi, S + 0x1100); a.mov(ecx, 0x200); a.mov(eax, 0x600DF00D); a.rep.stosd(); a.cld(); },
        ["stosq downwards"] = a => { a.std(); a.mov(rdi, S + 0x1008); a.mov(ecx, 0x10); a.mov(rax, -1L); a.rep.stosq(); a.cld(); },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void Rep_string_instruction_matches_kvm(string name)
    {
        HostRequirements.RequireKvm();
        var code = GuestProgram.Assemble(64, DiffVm.CodeAddress, a =>
        {
            Sequences[name](a);
            a.hlt();
        });
        var scratch = new byte[DiffVm.ScratchSize];
        new Random(name.Length * 7919).NextBytes(scratch);
        var regs = new GeneralRegisters { Rip = DiffVm.CodeAddress, Rsp = DiffVm.ScratchAddress + 0x1000, Rflags = 0x202 };
        ulong end = DiffVm.CodeAddress + (ulong)code.Length - 1;

        SequenceResult kvm, interp, jit;
        using (var vm = new DiffVm(TestBackends.Create("kvm")))
        {
            kvm = vm.Run(code, end, regs, scratch);
        }

        using (var vm = new DiffVm(TestBackends.Create("interpreter")))
        {
            interp = vm.Run(code, end, regs, scratch);
        }

        using (var vm = new DiffVm(TestBackends.Create("jit")))
        {
            jit = vm.Run(code, end, regs, scratch);
        }

        string? difference = DifferentialTests.Compare(kvm, interp);
        Assert.True(difference is null, $"{name}: {difference}");
        difference = DifferentialTests.Compare(kvm, jit);
        Assert.True(difference is null, $"{name}, JIT tier: {difference}");
    }
}
