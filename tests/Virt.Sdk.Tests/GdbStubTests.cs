using System.Net;
using Iced.Intel;
using Virt.Boot;
using Virt.Testing;
using Xunit;
using static Iced.Intel.AssemblerRegisters;

namespace Virt.Sdk.Tests;

/// <summary>Debian's GDB drives flat guests through the VM's GDB server on each backend, in batch mode.</summary>
public sealed class GdbStubTests
{
    private const ulong Load = 0x10000;

    /// <summary>
    /// The guest: two constants into EAX and EBX, their sum, a read of the word at <c>input</c> (which GDB writes), a store of
    /// it at <c>output</c> (which GDB watches) and the debug-exit device with the byte read as exit code. With
    /// <paramref name="avx"/> it first enables AVX state and sets YMM1 to all ones.
    /// </summary>
    private static (byte[] Code, ulong Add, ulong Out, ulong Input, ulong Output) Guest(bool avx)
    {
        const ulong input = 0x11000, output = 0x11008;
        byte[] code = GuestProgram.Assemble(64, Load, a =>
        {
            if (avx)
            {
                // AVX state on (CR4.OSXSAVE, XCR0), and YMM1 all ones, upper half included.
                a.mov(rax, cr4);
                a.or(rax, 1 << 18);
                a.mov(cr4, rax);
                a.xor(ecx, ecx);
                a.mov(eax, 7);
                a.xor(edx, edx);
                a.xsetbv();
                a.vpcmpeqb(ymm1, ymm1, ymm1);
            }

            a.mov(eax, 0x1111);
            a.mov(ebx, 0x2222);
            a.add(eax, ebx);
            a.mov(rcx, __qword_ptr[(long)input]);
            a.mov(__qword_ptr[(long)output], rcx);
            a.mov(dx, VirtualMachineBuilder.DefaultDebugExitPort);
            a.mov(al, cl);
            a.@out(dx, al);
            a.hlt();
        });

        // The ADD (01 D8) and the OUT (EE) are found in the bytes.
        ulong add = Load + (ulong)IndexOf(code, [0x01, 0xD8]);
        ulong outAt = Load + (ulong)IndexOf(code, [0xEE]);
        return (code, add, outAt, input, output);
    }

    private static int IndexOf(byte[] code, byte[] pattern)
    {
        for (int i = 0; i + pattern.Length <= code.Length; i++)
        {
            if (code.AsSpan(i, pattern.Length).SequenceEqual(pattern))
            {
                return i;
            }
        }

        throw new InvalidOperationException("pattern not in the guest code");
    }

    /// <summary>KVM without hardware virtualization (PVM) stops only kernel-mode code, and only for single steps and execute breakpoints.</summary>
    private static bool HostHasNoDataBreakpoints => Directory.Exists("/sys/module/kvm_pvm") || !File.ReadAllText("/proc/cpuinfo").Contains(" vmx", StringComparison.Ordinal) && !File.ReadAllText("/proc/cpuinfo").Contains(" svm", StringComparison.Ordinal);

    [Theory]
    [MemberData(nameof(FlatGuestVm.Backends), MemberType = typeof(FlatGuestVm))]
    public async Task Gdb_breaks_steps_reads_registers_writes_memory_watches_and_continues_to_the_exit(string backend)
    {
        // The interpreter's guest also shows a YMM register whole (GDB joins XMM1 and the ymm1h register of the avx feature).
        bool avx = backend == "interpreter";
        var (code, add, outAt, input, output) = Guest(avx);
        await using var vm = FlatGuestVm.Builder(backend)
            .WithFlatBinary(code, new GuestAddress(Load))
            .WithEntryPoint(new GuestAddress(Load), StartMode.Long64)
            .WithDebugExit()
            .Build();
        await using var server = await vm.StartGdbServerAsync(new IPEndPoint(IPAddress.Loopback, 0), TestContext.Current.CancellationToken);
        int port = ((IPEndPoint)server.LocalEndPoint).Port;

        using var dir = new TempDirectory();
        string script = Path.Combine(dir.Path, "commands.gdb");
        File.WriteAllLines(script,
        [
            "set pagination off",
            "set confirm off",
            $"target remote 127.0.0.1:{port}",
            $"break *0x{add:x}",
            "continue",
            "printf \"at-break rip=%#lx rax=%#lx\\n\", $rip, $rax",
            "printf \"ymm1 top=%d\\n\", $ymm1.v8_int32[7]",
            "stepi",
            "printf \"after-step rip=%#lx rax=%#lx\\n\", $rip, $rax",
            $"set {{unsigned long}}0x{input:x} = 42",
            // This host's paravirtual KVM has no data breakpoints (docs/backends.md): GDB watches by single-stepping there.
            backend == "kvm" && HostHasNoDataBreakpoints ? "set can-use-hw-watchpoints 0" : "set can-use-hw-watchpoints 1",
            $"watch *(unsigned long *)0x{output:x}",
            "continue",
            $"printf \"watched output=%lu\\n\", *(unsigned long *)0x{output:x}",
            "delete",
            $"hbreak *0x{outAt:x}",
            "continue",
            "printf \"at-hbreak rip=%#lx rcx=%lu\\n\", $rip, $rcx",
            "info threads",
            "printf \"cr0=%#lx efer=%#lx fs_base=%#lx\\n\", $cr0, $efer, $fs_base",
            "continue",
        ]);

        string gdbOutput = await Task.Run(() => HostTools.Run("gdb", $"-nx -batch -x {script}", TimeSpan.FromMinutes(2)), TestContext.Current.CancellationToken);
        Assert.Contains($"at-break rip=0x{add:x} rax=0x1111", gdbOutput, StringComparison.Ordinal);
        Assert.Contains(avx ? "ymm1 top=-1" : "ymm1 top=0", gdbOutput, StringComparison.Ordinal);
        Assert.Contains($"after-step rip=0x{add + 2:x} rax=0x3333", gdbOutput, StringComparison.Ordinal);
        Assert.Contains("watched output=42", gdbOutput, StringComparison.Ordinal);
        Assert.Contains(backend == "kvm" && HostHasNoDataBreakpoints ? "Watchpoint 2" : "Hardware watchpoint 2", gdbOutput, StringComparison.Ordinal);
        Assert.Contains($"at-hbreak rip=0x{outAt:x} rcx=42", gdbOutput, StringComparison.Ordinal);
        Assert.Contains("vCPU 0", gdbOutput, StringComparison.Ordinal);
        Assert.Matches(@"cr0=0x8[0-9a-f]{7} efer=0x[0-9a-f]*[5d][0-9a-f]{2} fs_base=0\n", gdbOutput); // paging on; EFER.LME and LMA
        Assert.Contains("exited with code 052", gdbOutput, StringComparison.Ordinal); // 42, printed in octal

        var exit = await vm.WaitForExitAsync(TestContext.Current.CancellationToken);
        Assert.Equal(StopReason.DebugExit, exit.Reason);
        Assert.Equal(42, exit.ExitCode);
    }
}
