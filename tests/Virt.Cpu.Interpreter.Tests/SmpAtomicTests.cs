using Iced.Intel;
using Virt.Boot;
using Virt.Memory;
using Virt.Testing;
using static Iced.Intel.AssemblerRegisters;

namespace Virt.Cpu.Interpreter.Tests;

/// <summary>
/// Several vCPUs of one partition, each on its own host thread, update shared memory with locked instructions at CPL 3;
/// the totals must be exact. KVM (the hardware) checks the guest programs themselves.
/// </summary>
public sealed class SmpAtomicTests
{
    private const ulong CodeAddress = 0x10000;
    private const ulong DataAddress = 0x40000;
    private const ulong HandlerAddress = 0x4000;
    private const ulong IdtAddress = 0x3000;
    private const ulong KernelStackTop = 0x7000;

    public static TheoryData<string, int> BackendsAndCounts() => new()
    {
        { "interpreter", 2 },
        { "interpreter", 4 },
        { "kvm", 2 },
    };

    [Theory]
    [MemberData(nameof(BackendsAndCounts))]
    public void Lock_xadd_from_every_vcpu_counts_exactly(string backend, int vcpus)
    {
        const int iterations = 50_000;
        var data = Run(backend, vcpus, a =>
        {
            var loop = a.CreateLabel();
            a.mov(ecx, iterations);
            a.Label(ref loop);
            a.mov(eax, 1);
            a.@lock.xadd(__dword_ptr[DataAddress], eax);
            a.dec(ecx);
            a.jnz(loop);
        });
        Assert.Equal((uint)(vcpus * iterations), Read<uint>(data, 0));
    }

    [Theory]
    [MemberData(nameof(BackendsAndCounts))]
    public void Locked_add_inc_cmpxchg_and_bts_btr_of_neighbouring_bytes_are_exact(string backend, int vcpus)
    {
        const int iterations = 20_000;
        var data = Run(backend, vcpus, a =>
        {
            var loop = a.CreateLabel();
            var retry = a.CreateLabel();
            a.mov(ecx, iterations);
            a.Label(ref loop);

            // A 64-bit LOCK ADD, a 16-bit LOCK INC at an odd address next to it, and a CMPXCHG loop.
            a.@lock.add(__qword_ptr[DataAddress + 0x40], 3);
            a.@lock.inc(__word_ptr[DataAddress + 0x49]);
            a.Label(ref retry);
            a.mov(eax, __dword_ptr[DataAddress + 0x50]);
            a.lea(edx, __[rax + 2]);
            a.@lock.cmpxchg(__dword_ptr[DataAddress + 0x50], edx);
            a.jnz(retry);

            // Each vCPU toggles its own bit of a shared byte: BTS then BTR must never lose another vCPU's bit.
            a.@lock.bts(__dword_ptr[DataAddress + 0x60], edi);
            a.@lock.btr(__dword_ptr[DataAddress + 0x60], edi);
            a.@lock.bts(__dword_ptr[DataAddress + 0x64], edi);
            a.dec(ecx);
            a.jnz(loop);
        });
        Assert.Equal((ulong)(vcpus * iterations * 3), Read<ulong>(data, 0x40));
        Assert.Equal((ushort)(vcpus * iterations), Read<ushort>(data, 0x49));
        Assert.Equal((uint)(vcpus * iterations * 2), Read<uint>(data, 0x50));
        Assert.Equal(0u, Read<uint>(data, 0x60));
        Assert.Equal((1u << vcpus) - 1, Read<uint>(data, 0x64));
    }

    [Theory]
    [MemberData(nameof(BackendsAndCounts))]
    public void Xchg_spinlock_protects_a_plain_increment_and_cmpxchg16b_counts_exactly(string backend, int vcpus)
    {
        const int iterations = 10_000;
        var data = Run(backend, vcpus, a =>
        {
            var spin = a.CreateLabel();
            var retry = a.CreateLabel();
            a.mov(r8d, iterations);

            // Take the lock with XCHG (implicitly locked), increment two plain words, release with a plain store (TSO).
            a.Label(ref spin);
            a.mov(eax, 1);
            a.xchg(__dword_ptr[DataAddress + 0x80], eax);
            a.test(eax, eax);
            a.jnz(spin);
            a.inc(__qword_ptr[DataAddress + 0x88]);
            a.inc(__qword_ptr[DataAddress + 0x90]);
            a.mov(__dword_ptr[DataAddress + 0x80], 0);

            // A 128-bit counter pair: both halves move together.
            a.mov(rax, __qword_ptr[DataAddress + 0xA0]);
            a.mov(rdx, __qword_ptr[DataAddress + 0xA8]);
            a.Label(ref retry);
            a.lea(rbx, __[rax + 1]);
            a.lea(rcx, __[rdx + 2]);
            a.@lock.cmpxchg16b(__xmmword_ptr[DataAddress + 0xA0]);
            a.jnz(retry);
            a.dec(r8d);
            a.jnz(spin);
        });
        ulong expected = (ulong)(vcpus * iterations);
        Assert.Equal(expected, Read<ulong>(data, 0x88));
        Assert.Equal(expected, Read<ulong>(data, 0x90));
        Assert.Equal(expected, Read<ulong>(data, 0xA0));
        Assert.Equal(expected * 2, Read<ulong>(data, 0xA8));
    }

    [Theory]
    [InlineData(2)]
    [InlineData(4)]
    public void Split_locked_add_across_a_cache_line_is_exact_on_the_interpreter(int vcpus)
    {
        // Split locks: the hardware's bus lock (KVM hosts may refuse them), the interpreter's bus lock here.
        const int iterations = 20_000;
        var data = Run("interpreter", vcpus, a =>
        {
            var loop = a.CreateLabel();
            a.mov(ecx, iterations);
            a.Label(ref loop);
            a.@lock.add(__qword_ptr[DataAddress + 0x3C], 1);
            a.mov(eax, 1);
            a.@lock.xadd(__dword_ptr[DataAddress + 0x3C], eax);
            a.dec(ecx);
            a.jnz(loop);
        });
        Assert.Equal((ulong)(vcpus * iterations * 2), Read<ulong>(data, 0x3C));
    }

    [Fact]
    public void A_vcpu_runs_code_another_vcpu_wrote_after_it_ran_the_old_code()
    {
        // vCPU 1 runs a function at 0x20000 that returns 1, then waits for vCPU 0 to rewrite it to return 2,
        // and runs it again; the rewritten code must run (cross-vCPU code-cache invalidation).
        const ulong function = 0x20000;
        byte[] one = GuestProgram.Assemble(64, function, a => { a.mov(eax, 1); a.ret(); });
        var data = Run("interpreter", 2, a =>
        {
            var writer = a.CreateLabel();
            var wait = a.CreateLabel();
            var done = a.CreateLabel();
            a.test(edi, edi);
            a.jz(writer);

            // vCPU 1: run it, publish the result, wait for the rewrite, run it again.
            a.mov(eax, (uint)function);
            a.call(rax);
            a.mov(__dword_ptr[DataAddress + 0x100], eax);
            a.mov(__dword_ptr[DataAddress + 0x104], 1);
            a.Label(ref wait);
            a.cmp(__dword_ptr[DataAddress + 0x108], 1);
            a.jne(wait);
            a.mov(eax, (uint)function);
            a.call(rax);
            a.mov(__dword_ptr[DataAddress + 0x10C], eax);
            a.jmp(done);

            // vCPU 0: wait until vCPU 1 ran the old code, rewrite the immediate, tell it.
            a.Label(ref writer);
            a.cmp(__dword_ptr[DataAddress + 0x104], 1);
            a.jne(writer);
            a.mov(__dword_ptr[function + 1], 2);
            a.mov(__dword_ptr[DataAddress + 0x108], 1);
            a.Label(ref done);
        }, setup: m => m.Write(new GuestAddress(function), one));
        Assert.Equal(1u, Read<uint>(data, 0x100));
        Assert.Equal(2u, Read<uint>(data, 0x10C));
    }

    private static T Read<T>(byte[] data, int offset)
        where T : unmanaged => System.Runtime.InteropServices.MemoryMarshal.Read<T>(data.AsSpan(offset));

    /// <summary>
    /// Runs <paramref name="body"/> at CPL 3 on <paramref name="vcpus"/> vCPUs (RDI is the vCPU's index), each on its own
    /// thread, until each ends in the closing HLT (a #GP at CPL 3, caught by a CPL 0 stub). Returns the data page.
    /// </summary>
    private static byte[] Run(string backend, int vcpus, Action<Assembler> body, Action<GuestMemory>? setup = null)
    {
        var hypervisor = TestBackends.Create(backend);
        using var memory = GuestMemory.CreateRam(4UL << 20);
        using var partition = hypervisor.CreatePartition(memory, new PartitionOptions { VcpuCount = vcpus });
        var cpus = Enumerable.Range(0, vcpus).Select(partition.CreateVcpu).ToArray();
        try
        {
            byte[] code = GuestProgram.Assemble(64, CodeAddress, a =>
            {
                body(a);
                a.hlt();
            });
            memory.Write(new GuestAddress(CodeAddress), code);
            for (int v = 0; v < 32; v++)
            {
                ulong h = HandlerAddress + (ulong)(v * 16);
                memory.Write(new GuestAddress(h), GuestProgram.Assemble(64, h, a => a.hlt()));
                ulong low = (h & 0xFFFF) | ((ulong)ProcessorSetup.KernelCode64 << 16) | (0x8EUL << 40) | (((h >> 16) & 0xFFFF) << 48);
                memory.Write(new GuestAddress(IdtAddress + (ulong)(v * 16)), low);
                memory.Write(new GuestAddress(IdtAddress + (ulong)(v * 16) + 8), h >> 32);
            }

            setup?.Invoke(memory);
            bool abandoned = false;
            var exits = new VcpuExit[vcpus];
            var ends = new ulong[vcpus];
            var threads = new Thread[vcpus];
            for (int i = 0; i < vcpus; i++)
            {
                var cpu = cpus[i];
                var s = ProcessorSetup.Prepare(memory, cpu.GetSpecialRegisters(), StartMode.Long64, new ProcessorSetupOptions { KernelStack = KernelStackTop - (ulong)(i * 0x400) });
                s.Idt = new DescriptorTable { Base = IdtAddress, Limit = (32 * 16) - 1 };
                s.Cs = ProcessorSetup.UserSegment(code: true);
                s.Ss = s.Ds = s.Es = s.Fs = s.Gs = ProcessorSetup.UserSegment(code: false);
                cpu.SetSpecialRegisters(s);
                cpu.SetGeneralRegisters(new GeneralRegisters { Rip = CodeAddress, Rsp = 0x30000 - (ulong)(i * 0x1000), Rdi = (ulong)i, Rflags = 2 });
                int index = i;
                threads[i] = new Thread(() =>
                {
                    VcpuExit exit;
                    do
                    {
                        exit = cpu.Run();
                    }
                    while (exit.Reason == VcpuExitReason.Interrupted && !Volatile.Read(ref abandoned));

                    exits[index] = exit;
                    ends[index] = cpu.GetGeneralRegisters().Rip;
                });
            }

            foreach (var t in threads)
            {
                t.Start();
            }

            // A vCPU that never finishes (a lost start, a hang) fails the test instead of blocking the run.
            var deadline = DateTime.UtcNow + TimeSpan.FromMinutes(2);
            foreach (var t in threads)
            {
                if (!t.Join(deadline - DateTime.UtcNow > TimeSpan.Zero ? deadline - DateTime.UtcNow : TimeSpan.Zero))
                {
                    Volatile.Write(ref abandoned, true);
                    foreach (var c in cpus)
                    {
                        c.RequestExit();
                    }

                    foreach (var other in threads)
                    {
                        other.Join();
                    }

                    Assert.Fail($"The vCPUs did not finish within two minutes: {string.Join(", ", exits.Select((e, k) => $"vCPU {k}: {e.Reason}"))}.");
                }
            }

            for (int i = 0; i < vcpus; i++)
            {
                Assert.True(exits[i].Reason == VcpuExitReason.Halt, $"vCPU {i}: {exits[i]}");
                Assert.InRange(ends[i], HandlerAddress + (13 * 16), HandlerAddress + (13 * 16) + 1); // the #GP stub's HLT
            }

            var data = new byte[0x1000];
            memory.Read(new GuestAddress(DataAddress), data);
            return data;
        }
        finally
        {
            foreach (var c in cpus)
            {
                c.Dispose();
            }
        }
    }
}
