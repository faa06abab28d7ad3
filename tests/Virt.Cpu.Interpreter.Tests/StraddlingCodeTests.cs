using Iced.Intel;
using Virt.Memory;
using Virt.Testing;
using static Iced.Intel.AssemblerRegisters;

namespace Virt.Cpu.Interpreter.Tests;

/// <summary>
/// An instruction whose bytes run into the next page is a block of its own, kept under both physical pages: it is decoded
/// once, not at every execution; a write into either page drops it; and when the next page is mapped elsewhere (INVLPG of
/// that page alone, or a CR3 write), the instruction runs with the bytes the new mapping holds.
/// </summary>
public sealed class StraddlingCodeTests
{
    private const int Passes = 300;

    /// <summary>Page tables (PML4, PDPT, PD, PT) that map the first 2 MiB with 4 KiB pages, identity.</summary>
    private const ulong Tables = 0x100000;
    private const ulong PageTable = Tables + 0x3000;

    /// <summary>The function <c>MOV EAX, imm32; RET</c>: its first three bytes end the page at <see cref="FunctionPage"/>.</summary>
    private const ulong Function = FunctionPage + 0x1000 - 3;
    private const ulong FunctionPage = 0x20000;
    private const ulong TailPage = FunctionPage + 0x1000;

    /// <summary>Another physical page with the function's last three bytes (another immediate's top half, RET).</summary>
    private const ulong OtherTail = 0x40000;

    private const uint Immediate = 0x12345678;
    private const uint OtherImmediate = 0x9ABC5678;

    /// <summary>Runs <paramref name="program"/> (at <see cref="Machine.CodeAddress"/>) under the 4 KiB identity map with the function in place.</summary>
    private static Machine RunToHalt(Action<Assembler> program, int threshold)
    {
        var m = Machine.Long64(program, hypervisor: threshold < 0 ? TestBackends.Interpreter() : TestBackends.Jit(threshold));
        MapFirstTwoMiB(m.Memory);
        var sregs = m.Vcpu.GetSpecialRegisters();
        sregs.Cr3 = Tables;
        m.Vcpu.SetSpecialRegisters(sregs);
        byte[] imm = BitConverter.GetBytes(Immediate), other = BitConverter.GetBytes(OtherImmediate);
        m.Memory.Write(new GuestAddress(Function), [0xB8, imm[0], imm[1]]);
        m.Memory.Write(new GuestAddress(TailPage), [imm[2], imm[3], 0xC3]);
        m.Memory.Write(new GuestAddress(OtherTail), [other[2], other[3], 0xC3]);
        m.InstallHaltingIdt();
        Assert.Equal(VcpuExitReason.Halt, m.Run().Reason);
        return m;
    }

    private static void MapFirstTwoMiB(GuestMemory memory)
    {
        const ulong Present = 1, Writable = 2;
        memory.Write(new GuestAddress(Tables), BitConverter.GetBytes(Tables + 0x1000 | Present | Writable));
        memory.Write(new GuestAddress(Tables + 0x1000), BitConverter.GetBytes(Tables + 0x2000 | Present | Writable));
        memory.Write(new GuestAddress(Tables + 0x2000), BitConverter.GetBytes(PageTable | Present | Writable));
        var entries = new byte[4096];
        for (int i = 0; i < 512; i++)
        {
            BitConverter.TryWriteBytes(entries.AsSpan(i * 8), ((ulong)i << 12) | Present | Writable);
        }

        memory.Write(new GuestAddress(PageTable), entries);
    }

    /// <summary>
    /// Calls the function <see cref="Passes"/> times, adding its result to RBX; in the pass where ECX is
    /// <see cref="Passes"/> / 2, after the call, runs <paramref name="change"/>.
    /// </summary>
    private static Action<Assembler> CallLoop(Action<Assembler> change) => a =>
    {
        var loop = a.CreateLabel();
        var skip = a.CreateLabel();
        a.mov(ecx, Passes);
        a.xor(ebx, ebx);
        a.Label(ref loop);
        a.call(Function);
        a.add(rbx, rax);
        a.cmp(ecx, Passes / 2);
        a.jne(skip);
        change(a);
        a.Label(ref skip);
        a.dec(ecx);
        a.jnz(loop);
        a.hlt();
    };

    /// <summary>RBX after the loop when the function returns <see cref="Immediate"/> up to the change and <paramref name="after"/> from then on.</summary>
    private static ulong Expected(uint after) => ((Passes / 2) + 1) * (ulong)Immediate + ((Passes / 2) - 1) * (ulong)after;

    [Theory]
    [InlineData(-1)]
    [InlineData(0)]
    [InlineData(2)]
    public void An_instruction_across_a_page_boundary_is_decoded_once_and_runs_every_time(int threshold)
    {
        using var m = RunToHalt(CallLoop(_ => { }), threshold);
        Assert.Equal(Expected(Immediate), m.Regs.Rbx);

        // The loop's few blocks and the function's two (the straddling MOV, the RET): not one decode per call.
        long decoded = ((InterpreterVcpu)m.Vcpu).BlocksDecoded;
        Assert.InRange(decoded, 3, 20);
    }

    [Theory]
    [InlineData(-1)]
    [InlineData(0)]
    [InlineData(2)]
    public void A_store_into_the_bytes_in_the_next_page_takes_effect_on_the_next_run(int threshold)
    {
        using var m = RunToHalt(CallLoop(a => a.mov(__word_ptr[TailPage], unchecked((short)(OtherImmediate >> 16)))), threshold);
        Assert.Equal(Expected(OtherImmediate), m.Regs.Rbx);
    }

    [Theory]
    [InlineData(-1)]
    [InlineData(0)]
    [InlineData(2)]
    public void A_store_into_the_bytes_in_the_first_page_takes_effect_on_the_next_run(int threshold)
    {
        using var m = RunToHalt(CallLoop(a => a.mov(__word_ptr[Function + 1], unchecked((short)0x1111))), threshold);
        Assert.Equal(Expected((Immediate & 0xFFFF0000) | 0x1111), m.Regs.Rbx);
    }

    [Theory]
    [InlineData(-1, false)]
    [InlineData(0, false)]
    [InlineData(2, false)]
    [InlineData(-1, true)]
    [InlineData(0, true)]
    [InlineData(2, true)]
    public void Mapping_the_next_page_elsewhere_runs_the_bytes_of_the_new_page(int threshold, bool reloadCr3)
    {
        // The page-table entry of the function's second page now points at the other tail; then either INVLPG of that
        // page alone (the block starts in the page before) or a CR3 write.
        using var m = RunToHalt(CallLoop(a =>
        {
            a.mov(rax, (long)(OtherTail | 3));
            a.mov(__qword_ptr[PageTable + (TailPage >> 12) * 8], rax);
            if (reloadCr3)
            {
                a.mov(rax, cr3);
                a.mov(cr3, rax);
            }
            else
            {
                a.invlpg(__byte_ptr[TailPage]);
            }
        }), threshold);
        Assert.Equal(Expected(OtherImmediate), m.Regs.Rbx);
    }

    [Theory]
    [InlineData(-1)]
    [InlineData(0)]
    public void Unmapping_the_next_page_faults_at_the_instruction_with_the_next_page_in_cr2(int threshold)
    {
        using var m = RunToHalt(CallLoop(a =>
        {
            a.xor(eax, eax);
            a.mov(__qword_ptr[PageTable + (TailPage >> 12) * 8], rax);
            a.invlpg(__byte_ptr[TailPage]);
        }), threshold);

        // The MOV's fetch from the next page faulted: #PF with CR2 there, and the frame holds the MOV's address.
        Assert.Equal(14, m.HaltedVector);
        Assert.Equal(TailPage, m.Vcpu.GetSpecialRegisters().Cr2);
        var frame = new byte[16];
        m.Memory.Read(new GuestAddress(m.Regs.Rsp), frame);
        Assert.Equal(Function, BitConverter.ToUInt64(frame, 8));
    }
}
