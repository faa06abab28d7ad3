using Iced.Intel;
using Virt.Testing;
using static Iced.Intel.AssemblerRegisters;

namespace Virt.Cpu.Interpreter.Tests;

/// <summary>
/// Writes into decoded code with one vCPU drop the blocks whose bytes they overlap (and compiled regions holding one),
/// not every block of the page: a kernel patches its own text an instruction at a time.
/// </summary>
public sealed class CodeWriteTests
{
    private const int Passes = 300;

    /// <summary>Runs <paramref name="program"/> to its HLT in the first tier (<paramref name="threshold"/> below 0) or with the JIT at that threshold.</summary>
    private static Machine RunToHalt(Action<Assembler> program, int threshold)
    {
        var m = Machine.Long64(program, hypervisor: threshold < 0 ? TestBackends.Interpreter() : TestBackends.Jit(threshold));
        Assert.Equal(VcpuExitReason.Halt, m.Run().Reason);
        return m;
    }

    /// <summary>
    /// A loop that calls A (three blocks) and B (MOV EAX, imm32; RET) on the same page, adds B's result, then stores
    /// ECX's low byte over the low byte of B's immediate.
    /// </summary>
    private static void PatchOneFunction(Assembler a)
    {
        var main = a.CreateLabel();
        var fa = a.CreateLabel();
        var fb = a.CreateLabel();
        var loop = a.CreateLabel();
        var a1 = a.CreateLabel();
        var a2 = a.CreateLabel();
        a.jmp(main);
        a.Label(ref fb);
        a.mov(eax, 0x12345678);
        a.ret();
        a.Label(ref fa);
        a.mov(edx, ecx);
        a.and(edx, 3);
        a.jz(a1);
        a.add(rbx, 5);
        a.Label(ref a1);
        a.test(ecx, 1);
        a.jnz(a2);
        a.add(rbx, 7);
        a.Label(ref a2);
        a.ret();
        a.Label(ref main);
        a.mov(ecx, Passes);
        a.xor(ebx, ebx);
        a.lea(rdi, __[fb]);
        a.Label(ref loop);
        a.call(fa);
        a.call(fb);
        a.add(rbx, rax);
        a.mov(__byte_ptr[rdi + 1], cl);
        a.dec(ecx);
        a.jnz(loop);
        a.hlt();
    }

    private static ulong PatchOneFunctionResult()
    {
        ulong rbx = 0;
        uint immediate = 0x12345678;
        for (uint c = Passes; c >= 1; c--)
        {
            rbx += ((c & 3) != 0 ? 5UL : 0) + ((c & 1) == 0 ? 7UL : 0) + immediate;
            immediate = (immediate & 0xFFFFFF00) | (c & 0xFF);
        }

        return rbx;
    }

    [Theory]
    [InlineData(-1)]
    [InlineData(0)]
    [InlineData(2)]
    public void A_store_into_one_function_takes_effect_and_leaves_the_rest_of_the_page_decoded(int threshold)
    {
        var code = GuestProgram.Assemble(64, Machine.CodeAddress, PatchOneFunction);
        Assert.True(code.AsSpan().IndexOf(new byte[] { 0xB8, 0x78, 0x56, 0x34, 0x12, 0xC3 }) > 0);
        using var m = RunToHalt(PatchOneFunction, threshold);
        Assert.Equal(PatchOneFunctionResult(), m.Regs.Rbx);

        // Each store drops B's block alone (decoded again on the next call); dropping the page would decode its
        // eight blocks again every pass.
        long decoded = ((InterpreterVcpu)m.Vcpu).BlocksDecoded;
        Assert.InRange(decoded, Passes, Passes + 20);
    }

    /// <summary>
    /// A loop of several blocks in one page (one compiled region at threshold 2) adds 1, or every fourth pass an
    /// immediate from a block of the region other than its root; halfway, a block of the same region rewrites that
    /// immediate (0x100 -> 7).
    /// </summary>
    private static void PatchInsideRegion(Assembler a)
    {
        var top = a.CreateLabel();
        var other = a.CreateLabel();
        var join = a.CreateLabel();
        var skip = a.CreateLabel();
        a.mov(ecx, RegionPasses);
        a.xor(eax, eax);
        a.lea(rdi, __[other]);
        a.Label(ref top);
        a.mov(r8d, ecx);
        a.and(r8d, 3);
        a.jz(other);
        a.add(rax, 1);
        a.jmp(join);
        a.Label(ref other);
        a.add(rax, 0x100);
        a.Label(ref join);
        a.cmp(ecx, RegionPasses / 2);
        a.jne(skip);
        a.mov(__dword_ptr[rdi + 2], 7);
        a.Label(ref skip);
        a.dec(ecx);
        a.jnz(top);
        a.hlt();
    }

    private const int RegionPasses = 2_000_000;

    [Theory]
    [InlineData(-1)]
    [InlineData(0)]
    [InlineData(2)]
    public void A_store_into_a_block_of_a_compiled_region_drops_the_region(int threshold)
    {
        var code = GuestProgram.Assemble(64, Machine.CodeAddress, PatchInsideRegion);
        Assert.True(code.AsSpan().IndexOf(new byte[] { 0x48, 0x05, 0x00, 0x01, 0x00, 0x00 }) > 0);
        using var m = RunToHalt(PatchInsideRegion, threshold);

        ulong expected = 0;
        for (uint c = RegionPasses; c >= 1; c--)
        {
            expected += (c & 3) != 0 ? 1UL : c >= RegionPasses / 2 ? 0x100UL : 7UL;
        }

        Assert.Equal(expected, m.Regs.Rax);
    }

    /// <summary>A loop that keeps a counter in memory on its own code page, beside its blocks.</summary>
    private static void DataOnTheCodePage(Assembler a)
    {
        var counter = a.CreateLabel();
        var loop = a.CreateLabel();
        var start = a.CreateLabel();
        a.jmp(start);
        a.Label(ref counter);
        a.dq(0);
        a.Label(ref start);
        a.lea(rdi, __[counter]);
        a.mov(ecx, DataPasses);
        a.Label(ref loop);
        a.add(__qword_ptr[rdi], rcx);
        a.dec(ecx);
        a.jnz(loop);
        a.mov(rax, __qword_ptr[rdi]);
        a.hlt();
    }

    private const int DataPasses = 20_000;

    [Theory]
    [InlineData(-1)]
    [InlineData(0)]
    [InlineData(2)]
    public void Data_written_beside_code_on_its_page_is_seen_and_the_page_is_dropped_only_every_so_many_writes(int threshold)
    {
        using var m = RunToHalt(DataOnTheCodePage, threshold);
        Assert.Equal((ulong)DataPasses * (DataPasses + 1) / 2, m.Regs.Rax);

        // The page is dropped after every 64 writes beside its blocks (then its two blocks are decoded again): about 600
        // blocks decoded, where dropping it at each write decodes the loop again every pass.
        long decoded = ((InterpreterVcpu)m.Vcpu).BlocksDecoded;
        Assert.InRange(decoded, 1, 4 * DataPasses / 64);
    }
}
