using Iced.Intel;
using Virt.Boot;
using Virt.Memory;
using Virt.Testing;

namespace Virt.Cpu.Interpreter.Tests.Differential;

/// <summary>What one sequence left behind: registers, flags, the exception it ended with, and the scratch memory.</summary>
internal sealed record SequenceResult(string Exit, int Vector, ulong ErrorCode, ulong Rip, ulong Rflags, ulong Cr2, ulong[] Gprs, byte[] Scratch);

/// <summary>
/// One long-mode VM for running many CPL 3 sequences: its own page tables map only the code (user, read-only),
/// three scratch pages (two read/write, one read-only) and supervisor-only kernel pages. Every exception lands in
/// a CPL 0 stub that halts at HandlerAddress + 16 * vector, so a run is one entry and one exit.
/// </summary>
internal sealed class DiffVm : IDisposable
{
    public const ulong CodeAddress = 0x10000;
    public const ulong ScratchAddress = 0x40000;
    public const int ScratchSize = 0x3000;
    public const ulong HandlerAddress = 0x4000;
    public const ulong IdtAddress = 0x3000;
    public const ulong KernelStackTop = 0x7000;
    public const ulong PageTables = 0x20000;
    public const ulong FsBase = 0x10;
    public const ulong GsBase = 0x7F0;


    /// <param name="hypervisor">The backend.</param>
    /// <param name="compatibility">CPL 3 code runs in 32-bit compatibility mode instead of 64-bit mode.</param>
    public DiffVm(IHypervisor hypervisor, bool compatibility = false)
    {
        Memory = GuestMemory.CreateRam(4UL << 20);
        Partition = hypervisor.CreatePartition(Memory, new PartitionOptions());
        Vcpu = Partition.CreateVcpu(0);
        var s = ProcessorSetup.Prepare(Memory, Vcpu.GetSpecialRegisters(), StartMode.Long64, new ProcessorSetupOptions { KernelStack = KernelStackTop });

        for (int v = 0; v < 32; v++)
        {
            ulong h = HandlerAddress + (ulong)(v * 16);
            Memory.Write(new GuestAddress(h), GuestProgram.Assemble(64, h, a => a.hlt()));
            ulong low = (h & 0xFFFF) | ((ulong)ProcessorSetup.KernelCode64 << 16) | (0x8EUL << 40) | (((h >> 16) & 0xFFFF) << 48);
            Memory.Write(new GuestAddress(IdtAddress + (ulong)(v * 16)), low);
            Memory.Write(new GuestAddress(IdtAddress + (ulong)(v * 16) + 8), h >> 32);
        }

        // PML4 -> PDPT -> PD -> one page table for the first 2 MiB.
        const ulong p = 1, w = 2, u = 4;
        Memory.Write(new GuestAddress(PageTables), (PageTables + 0x1000) | p | w | u);
        Memory.Write(new GuestAddress(PageTables + 0x1000), (PageTables + 0x2000) | p | w | u);
        Memory.Write(new GuestAddress(PageTables + 0x2000), (PageTables + 0x3000) | p | w | u);
        for (ulong page = 0; page < 512; page++)
        {
            ulong addr = page << 12;
            ulong e = 0;
            if (addr < 0x10000 || (addr >= PageTables && addr < PageTables + 0x4000))
            {
                e = addr | p | w; // kernel only
            }
            else if (addr is >= CodeAddress and < CodeAddress + 0x2000)
            {
                e = addr | p | u; // user code, read-only
            }
            else if (addr is >= ScratchAddress and < ScratchAddress + 0x2000)
            {
                e = addr | p | w | u;
            }
            else if (addr == ScratchAddress + 0x2000)
            {
                e = addr | p | u; // read-only scratch page
            }

            Memory.Write(new GuestAddress(PageTables + 0x3000 + (page * 8)), e);
        }

        s.Cr3 = PageTables;
        s.Idt = new DescriptorTable { Base = IdtAddress, Limit = (32 * 16) - 1 };
        s.Cs = ProcessorSetup.UserSegment(code: true, longMode: !compatibility);
        s.Ss = s.Ds = s.Es = ProcessorSetup.UserSegment(code: false);
        s.Fs = ProcessorSetup.UserSegment(code: false);
        s.Fs.Base = FsBase;
        s.Gs = ProcessorSetup.UserSegment(code: false);
        s.Gs.Base = GsBase;
        UserSpecialRegisters = s;
    }

    /// <summary>The special registers every <see cref="Run"/> starts with (CPL 3 segments); tests may set control-register bits in them (CR4.OSXSAVE, CR0.TS).</summary>
    public SpecialRegisters UserSpecialRegisters { get; set; }

    public GuestMemory Memory { get; }

    public IPartition Partition { get; }

    public IVirtualCpu Vcpu { get; }

    public SequenceResult Run(byte[] code, ulong endRip, in GeneralRegisters start, byte[] scratch)
    {
        Memory.Write(new GuestAddress(CodeAddress), code);
        Memory.Write(new GuestAddress(ScratchAddress), scratch);
        Vcpu.SetSpecialRegisters(UserSpecialRegisters);
        Vcpu.SetGeneralRegisters(start);
        VcpuExit exit;
        int guard = 0;
        do
        {
            exit = Vcpu.Run();
        }
        while (exit.Reason == VcpuExitReason.Interrupted && ++guard < 100);

        var r = Vcpu.GetGeneralRegisters();
        var sregs = Vcpu.GetSpecialRegisters();
        var outScratch = new byte[ScratchSize];
        Memory.Read(new GuestAddress(ScratchAddress), outScratch);
        ulong[] gprs = [r.Rax, r.Rcx, r.Rdx, r.Rbx, 0, r.Rbp, r.Rsi, r.Rdi, r.R8, r.R9, r.R10, r.R11, r.R12, r.R13, r.R14, r.R15];
        if (exit.Reason != VcpuExitReason.Halt || r.Rip < HandlerAddress || r.Rip >= HandlerAddress + (32 * 16))
        {
            return new SequenceResult(exit.ToString(), -1, 0, r.Rip, r.Rflags, 0, gprs, outScratch);
        }

        int vector = (int)((r.Rip - HandlerAddress) / 16);
        bool hasError = vector is 8 or 10 or 11 or 12 or 13 or 14 or 17;
        ulong frame = r.Rsp;
        ulong error = hasError ? Memory.Read<ulong>(new GuestAddress(frame)) : 0;
        if (hasError)
        {
            frame += 8;
        }

        ulong rip = Memory.Read<ulong>(new GuestAddress(frame));
        ulong rflags = Memory.Read<ulong>(new GuestAddress(frame + 16));
        gprs[4] = Memory.Read<ulong>(new GuestAddress(frame + 24));
        if (vector == 13 && rip == endRip && error == 0)
        {
            vector = -2; // the closing HLT: a normal end
        }

        return new SequenceResult("halt", vector, error, rip, rflags, vector == 14 ? sregs.Cr2 : 0, gprs, outScratch);
    }

    /// <summary>The disassembly of a sequence at <see cref="CodeAddress"/>, one instruction a line, for failure messages.</summary>
    public static string Listing(byte[] code, int bitness = 64)
    {
        var decoder = Iced.Intel.Decoder.Create(bitness, new ByteArrayCodeReader(code), CodeAddress);
        var formatter = new NasmFormatter();
        var output = new StringOutput();
        var sb = new System.Text.StringBuilder();
        while (decoder.IP < CodeAddress + (ulong)code.Length)
        {
            decoder.Decode(out var ins);
            formatter.Format(ins, output);
            sb.AppendLine(System.Globalization.CultureInfo.InvariantCulture, $"  {ins.IP:x5}: {output.ToStringAndReset()}");
        }

        return sb.ToString();
    }

    /// <summary>Instructions <paramref name="first"/> to <paramref name="last"/> (exclusive) of a generated list, one a line, for failure messages.</summary>
    public static System.Text.StringBuilder Listing(IReadOnlyList<Instruction> list, int first, int last)
    {
        var formatter = new NasmFormatter();
        var output = new StringOutput();
        var sb = new System.Text.StringBuilder();
        for (int i = first; i < last; i++)
        {
            formatter.Format(list[i], output);
            sb.AppendLine(System.Globalization.CultureInfo.InvariantCulture, $"  {output.ToStringAndReset()}");
        }

        return sb;
    }

    public void Dispose()
    {
        Vcpu.Dispose();
        Partition.Dispose();
        Memory.Dispose();
    }
}
