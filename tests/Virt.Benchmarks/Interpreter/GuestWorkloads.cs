using Iced.Intel;
using Virt.Boot;
using Virt.Cpu;
using Virt.Memory;
using Virt.Testing;
using static Iced.Intel.AssemblerRegisters;

namespace Virt.Benchmarks.Interpreter;

/// <summary>The CPU benchmark guests, run at CPL 3 on any backend.</summary>
internal static class GuestWorkloads
{
    public const ulong CodeAddress = 0x10000;
    public const ulong HandlerAddress = 0x4000;
    public const ulong IdtAddress = 0x3000;
    public const ulong UserStack = 0x80000;
    public const ulong DataAddress = 0x200000;
    public const int DataSize = 1 << 20;
    public const ulong MemorySize = 8UL << 20;

    /// <summary>(a) tight integer loop: 3 instructions per iteration.</summary>
    public const int LoopIterations = 20_000_000;

    /// <summary>(b) passes of the byte checksum over 1 MiB (5 instructions per byte).</summary>
    public const int ChecksumPasses = 8;

    /// <summary>(c) sieve size in bytes.</summary>
    public const int SieveSize = 1 << 20;

    /// <summary>(d) calls of the dispatcher by the call-heavy workload.</summary>
    public const int CallIterations = 2_000_000;

    /// <summary>Where the call-heavy workload keeps its table of four function pointers.</summary>
    public const ulong TableAddress = DataAddress + DataSize;

    /// <summary>(e) terms of the harmonic sum the x87 workload adds.</summary>
    public const int FpuIterations = 2_000_000;

    /// <summary>(f, g) passes of the vector workloads over 1 MiB.</summary>
    public const int VectorPasses = 16;

    /// <summary>
    /// (f) SSE2 vector loop over the 1 MiB of data, 16 bytes a step: the dwords summed (PADDD) and the zero bytes counted
    /// (PCMPEQB, PMOVMSKB, POPCNT), as string and checksum routines do; 9 instructions per step, the sum of the
    /// counts in RAX.
    /// </summary>
    public static byte[] VectorSse() => GuestProgram.Assemble(64, CodeAddress, a =>
    {
        var outer = a.CreateLabel();
        var inner = a.CreateLabel();
        a.xor(eax, eax);
        a.pxor(xmm0, xmm0);
        a.pxor(xmm3, xmm3);
        a.mov(r8d, VectorPasses);
        a.Label(ref outer);
        a.mov(esi, (int)DataAddress);
        a.mov(ecx, DataSize / 16);
        a.Label(ref inner);
        a.movdqu(xmm1, __xmmword_ptr[rsi]);
        a.paddd(xmm0, xmm1);
        a.pcmpeqb(xmm1, xmm3);
        a.pmovmskb(edx, xmm1);
        a.popcnt(edx, edx);
        a.add(rax, rdx);
        a.add(rsi, 16);
        a.dec(ecx);
        a.jnz(inner);
        a.dec(r8d);
        a.jnz(outer);
        a.hlt();
    });

    /// <summary>(g) the same as <see cref="VectorSse"/> with AVX2 on YMM registers, 32 bytes a step (the guest needs AVX state enabled: <see cref="Guest"/>'s avx).</summary>
    public static byte[] VectorAvx() => GuestProgram.Assemble(64, CodeAddress, a =>
    {
        var outer = a.CreateLabel();
        var inner = a.CreateLabel();
        a.xor(eax, eax);
        a.vpxor(ymm0, ymm0, ymm0);
        a.vpxor(ymm3, ymm3, ymm3);
        a.mov(r8d, VectorPasses);
        a.Label(ref outer);
        a.mov(esi, (int)DataAddress);
        a.mov(ecx, DataSize / 32);
        a.Label(ref inner);
        a.vmovdqu(ymm1, __ymmword_ptr[rsi]);
        a.vpaddd(ymm0, ymm0, ymm1);
        a.vpcmpeqb(ymm1, ymm1, ymm3);
        a.vpmovmskb(edx, ymm1);
        a.popcnt(edx, edx);
        a.add(rax, rdx);
        a.add(rsi, 32);
        a.dec(ecx);
        a.jnz(inner);
        a.dec(r8d);
        a.jnz(outer);
        a.vzeroupper();
        a.hlt();
    });

    public static byte[] TightLoop() => GuestProgram.Assemble(64, CodeAddress, a =>
    {
        var l = a.CreateLabel();
        a.mov(ecx, LoopIterations);
        a.xor(eax, eax);
        a.Label(ref l);
        a.add(rax, rcx);
        a.dec(rcx);
        a.jnz(l);
        a.hlt();
    });

    /// <summary>
    /// (e) x87 arithmetic: the harmonic sum 1/1 + ... + 1/n with FILD, FLD1, FDIVRP and FADDP (7 instructions per
    /// term), its integer part in RAX.
    /// </summary>
    public static byte[] Fpu() => GuestProgram.Assemble(64, CodeAddress, a =>
    {
        var l = a.CreateLabel();
        a.mov(esi, (int)DataAddress);
        a.mov(ecx, FpuIterations);
        a.fninit();
        a.fldz();
        a.Label(ref l);
        a.mov(__dword_ptr[rsi], ecx);
        a.fild(__dword_ptr[rsi]);
        a.fld1();
        a.fdivrp(st1, st0);
        a.faddp(st1, st0);
        a.dec(ecx);
        a.jnz(l);
        a.fisttp(__qword_ptr[rsi]);
        a.mov(rax, __qword_ptr[rsi]);
        a.hlt();
    });

    public static byte[] Checksum() => GuestProgram.Assemble(64, CodeAddress, a =>
    {
        var outer = a.CreateLabel();
        var inner = a.CreateLabel();
        a.xor(eax, eax);
        a.mov(r8d, ChecksumPasses);
        a.Label(ref outer);
        a.mov(esi, (int)DataAddress);
        a.mov(ecx, DataSize);
        a.Label(ref inner);
        a.movzx(edx, __byte_ptr[rsi]);
        a.add(eax, edx);
        a.inc(rsi);
        a.dec(rcx);
        a.jnz(inner);
        a.dec(r8d);
        a.jnz(outer);
        a.hlt();
    });

    public static byte[] Sieve() => GuestProgram.Assemble(64, CodeAddress, a =>
    {
        // Byte array at DataAddress: 0 = prime candidate. Counts primes below SieveSize into RAX.
        var clear = a.CreateLabel();
        var outer = a.CreateLabel();
        var mark = a.CreateLabel();
        var next = a.CreateLabel();
        var count = a.CreateLabel();
        var skip = a.CreateLabel();
        var done = a.CreateLabel();
        a.mov(edi, (int)DataAddress);
        a.mov(ecx, SieveSize / 8);
        a.xor(eax, eax);
        a.Label(ref clear);
        a.mov(__qword_ptr[rdi], rax);
        a.add(rdi, 8);
        a.dec(rcx);
        a.jnz(clear);
        a.mov(edi, (int)DataAddress);
        a.mov(ebx, 2);
        a.Label(ref outer);
        a.mov(rdx, rbx);
        a.imul(rdx, rbx);
        a.cmp(rdx, SieveSize);
        a.jae(count);
        a.cmp(__byte_ptr[rdi + rbx], 0);
        a.jne(next);
        a.Label(ref mark);
        a.mov(__byte_ptr[rdi + rdx], 1);
        a.add(rdx, rbx);
        a.cmp(rdx, SieveSize);
        a.jb(mark);
        a.Label(ref next);
        a.inc(rbx);
        a.jmp(outer);
        a.Label(ref count);
        a.xor(eax, eax);
        a.mov(ebx, 2);
        var loop = a.CreateLabel();
        a.Label(ref loop);
        a.cmp(__byte_ptr[rdi + rbx], 0);
        a.jne(skip);
        a.inc(rax);
        a.Label(ref skip);
        a.inc(rbx);
        a.cmp(rbx, SieveSize);
        a.jb(loop);
        a.Label(ref done);
        a.hlt();
    });

    /// <summary>
    /// (d) call-heavy code shaped like an operating system's: a loop calls a dispatcher, which calls one of four small
    /// functions through a table of pointers (an indirect call, as through an operations structure) and, on every other
    /// pass, a fifth function directly; the functions branch, push, load a data byte and return to several call sites.
    /// About 20 instructions per pass in blocks of two to six, so the time goes to block transitions (calls, returns
    /// to changing targets, indirect calls), not to a loop body. The control flow does not depend on the data.
    /// </summary>
    public static byte[] Calls() => GuestProgram.Assemble(64, CodeAddress, a =>
    {
        var start = a.CreateLabel();
        var f0 = a.CreateLabel();
        var f1 = a.CreateLabel();
        var f2 = a.CreateLabel();
        var f3 = a.CreateLabel();
        var f3Skip = a.CreateLabel();
        var mix = a.CreateLabel();
        var dispatch = a.CreateLabel();
        var even = a.CreateLabel();
        var outer = a.CreateLabel();
        a.jmp(start);

        a.Label(ref f0);
        a.lea(rax, __[rax + rdi * 2]);
        a.ret();

        a.Label(ref f1);
        a.mov(edx, edi);
        a.and(edx, DataSize - 1);
        a.movzx(edx, __byte_ptr[rdx + (int)DataAddress]);
        a.xor(rax, rdx);
        a.ret();

        a.Label(ref f2);
        a.rol(rax, 3);
        a.add(rax, rdi);
        a.ret();

        a.Label(ref f3);
        a.test(edi, 8);
        a.jz(f3Skip);
        a.sub(rax, rdi);
        a.Label(ref f3Skip);
        a.inc(rax);
        a.ret();

        a.Label(ref mix);
        a.push(rbx);
        a.mov(rbx, rax);
        a.shr(rbx, 7);
        a.add(rax, rbx);
        a.pop(rbx);
        a.ret();

        a.Label(ref dispatch);
        a.push(rbp);
        a.mov(rbp, rdi);
        a.mov(ecx, edi);
        a.and(ecx, 3);
        a.call(__qword_ptr[rcx * 8 + (int)TableAddress]);
        a.test(ebp, 4);
        a.jz(even);
        a.mov(rdi, rbp);
        a.call(mix);
        a.Label(ref even);
        a.pop(rbp);
        a.ret();

        a.Label(ref start);
        a.lea(rcx, __[f0]);
        a.mov(__qword_ptr[(int)TableAddress], rcx);
        a.lea(rcx, __[f1]);
        a.mov(__qword_ptr[(int)TableAddress + 8], rcx);
        a.lea(rcx, __[f2]);
        a.mov(__qword_ptr[(int)TableAddress + 16], rcx);
        a.lea(rcx, __[f3]);
        a.mov(__qword_ptr[(int)TableAddress + 24], rcx);
        a.xor(eax, eax);
        a.xor(ebx, ebx);
        a.mov(r12d, CallIterations);
        a.Label(ref outer);
        a.mov(edi, ebx);
        a.call(dispatch);
        a.inc(ebx);
        a.cmp(ebx, r12d);
        a.jb(outer);
        a.hlt();
    });

    /// <summary>A guest (memory, partition, vCPU) ready to run <paramref name="code"/> at CPL 3 from the start.</summary>
    public sealed class Guest : IDisposable
    {
        private readonly GeneralRegisters _startRegs;
        private readonly SpecialRegisters _startSregs;

        /// <param name="hypervisor">The backend.</param>
        /// <param name="code">The workload.</param>
        /// <param name="avx">Enable AVX state as an operating system would (CR4.OSXSAVE, XCR0 with x87, SSE and AVX).</param>
        public Guest(IHypervisor hypervisor, byte[] code, bool avx = false)
        {
            Memory = GuestMemory.CreateRam(MemorySize);
            Partition = hypervisor.CreatePartition(Memory, new PartitionOptions());
            Vcpu = Partition.CreateVcpu(0);
            Memory.Write(new GuestAddress(CodeAddress), code);
            var data = new byte[DataSize];
            new Random(1).NextBytes(data);
            Memory.Write(new GuestAddress(DataAddress), data);
            var s = ProcessorSetup.Prepare(Memory, Vcpu.GetSpecialRegisters(), StartMode.Long64, new ProcessorSetupOptions { KernelStack = 0x7000 });

            // Every exception goes to a CPL 0 handler that halts: HLT at CPL 3 raises #GP, which ends the run.
            Memory.Write(new GuestAddress(HandlerAddress), GuestProgram.Assemble(64, HandlerAddress, a => a.hlt()));
            for (int v = 0; v < 32; v++)
            {
                ulong low = (HandlerAddress & 0xFFFF) | ((ulong)ProcessorSetup.KernelCode64 << 16) | (0x8EUL << 40) | (((HandlerAddress >> 16) & 0xFFFF) << 48);
                Memory.Write(new GuestAddress(IdtAddress + (ulong)(v * 16)), low);
                Memory.Write(new GuestAddress(IdtAddress + (ulong)(v * 16) + 8), 0UL);
            }

            s.Idt = new DescriptorTable { Base = IdtAddress, Limit = (32 * 16) - 1 };
            s.Cs = ProcessorSetup.UserSegment(code: true);
            s.Ss = s.Ds = s.Es = ProcessorSetup.UserSegment(code: false);
            if (avx)
            {
                s.Cr4 |= 1UL << 18; // OSXSAVE
                Vcpu.SetSpecialRegisters(s);
                Vcpu.SetXsaveState(XsaveState.FromFpu(Vcpu.GetFpuState(), 7));
            }

            _startSregs = s;
            _startRegs = new GeneralRegisters { Rip = CodeAddress, Rsp = UserStack, Rflags = 2 };
        }

        public GuestMemory Memory { get; }

        public IPartition Partition { get; }

        public IVirtualCpu Vcpu { get; }

        /// <summary>Runs the guest from its start to the halt; returns RAX (the workload's result).</summary>
        public ulong RunOnce()
        {
            Vcpu.SetSpecialRegisters(_startSregs);
            Vcpu.SetGeneralRegisters(_startRegs);
            while (true)
            {
                var exit = Vcpu.Run();
                if (exit.Reason == VcpuExitReason.Halt)
                {
                    return Vcpu.GetGeneralRegisters().Rax;
                }

                if (exit.Reason != VcpuExitReason.Interrupted)
                {
                    throw new InvalidOperationException($"Benchmark guest stopped with {exit}.");
                }
            }
        }

        public void Dispose()
        {
            Vcpu.Dispose();
            Partition.Dispose();
            Memory.Dispose();
        }
    }
}
