using Virt.Boot;
using Virt.Testing;
using Xunit;
using static Iced.Intel.AssemblerRegisters;

namespace Virt.Sdk.Tests;

/// <summary>A flat guest with several vCPUs and the interrupt controllers: every vCPU starts at the entry point.</summary>
public sealed class SmpFlatGuestTests
{
    private const ulong Load = 0x100000;
    private const ulong Counter = 0x200000;
    private const int Iterations = 2000;

    public static TheoryData<string> Backends => FlatGuestVm.Backends;

    [Theory]
    [MemberData(nameof(Backends))]
    public async Task Every_vcpu_adds_to_a_shared_counter_with_lock_xadd_and_the_total_is_exact(string backend)
    {
        const int vcpus = 2;
        var code = GuestProgram.Assemble(64, Load, a =>
        {
            var loop = a.CreateLabel();
            var wait = a.CreateLabel();
            var spin = a.CreateLabel();
            a.mov(ecx, Iterations);
            a.Label(ref loop);
            a.mov(eax, 1);
            a.@lock.xadd(__dword_ptr[Counter], eax);
            a.dec(ecx);
            a.jnz(loop);
            a.test(edi, edi); // the builder puts each vCPU's index in RDI
            a.jnz(spin);
            a.Label(ref wait);
            a.cmp(__dword_ptr[Counter], vcpus * Iterations);
            a.jb(wait);
            a.mov(dx, VirtualMachineBuilder.DefaultDebugExitPort);
            a.mov(al, 0);
            a.@out(dx, al);
            a.Label(ref spin);
            a.pause();
            a.jmp(spin);
        });
        await using var vm = FlatGuestVm.Builder(backend)
            .WithVcpus(vcpus)
            .WithInterruptController()
            .WithFlatBinary(code, new GuestAddress(Load))
            .WithEntryPoint(new GuestAddress(Load), StartMode.Long64)
            .WithDebugExit()
            .Build();
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
        timeout.CancelAfter(TimeSpan.FromMinutes(2));
        var exit = await vm.RunAsync(timeout.Token);
        Assert.True(exit.Reason == StopReason.DebugExit, exit.Description);
        Assert.Equal((uint)(vcpus * Iterations), vm.Memory.Read<uint>(new GuestAddress(Counter)));
    }

    private const ulong Results = 0x30000; // below 1 MiB: the started processor writes its marker from real mode
    private const ulong Ready = Results + 0x40, Seen = Results + 0x44, Marker = Results + 0x48;
    private const ulong Trampoline = 0x10000;
    private const uint MarkerValue = 0x5A5A_0002;
    private const int IpiVector = 0x40;

    /// <summary>
    /// Both vCPUs switch their local APIC to x2APIC mode and record their x2APIC ID (MSR 0x802) and leaf 0xB's EDX.
    /// vCPU 1 then waits with interrupts off until its IRR (MSR 0x822) shows the fixed IPI vCPU 0 sends it through the
    /// ICR MSR 0x830; vCPU 0 then sends it INIT and a start-up IPI through the same MSR, and the started processor
    /// writes a marker from real mode.
    /// </summary>
    private static byte[] X2ApicProgram() => GuestProgram.Assemble(64, Load, a =>
    {
        var ap = a.CreateLabel();
        var ready = a.CreateLabel();
        var seen = a.CreateLabel();
        var started = a.CreateLabel();
        var irr = a.CreateLabel();
        var spin = a.CreateLabel();
        a.mov(ecx, 0x1B);
        a.rdmsr();
        a.or(eax, 0x400); // x2APIC mode
        a.wrmsr();
        a.mov(ecx, 0x80F); // spurious-interrupt vector register: software-enable
        a.mov(eax, 0x1FF);
        a.xor(edx, edx);
        a.wrmsr();
        a.mov(esi, edi);
        a.shl(esi, 4);
        a.add(rsi, (int)Results);
        a.mov(ecx, 0x802);
        a.rdmsr();
        a.mov(__dword_ptr[rsi], eax);
        a.mov(eax, 0xB);
        a.xor(ecx, ecx);
        a.cpuid();
        a.mov(__dword_ptr[rsi + 4], edx);
        a.mov(eax, 1);
        a.cpuid();
        a.mov(__dword_ptr[rsi + 8], ecx);
        a.test(edi, edi);
        a.jnz(ap);

        a.Label(ref ready);
        a.cmp(__dword_ptr[Ready], 1);
        a.jne(ready);
        a.mov(ecx, 0x830);
        a.mov(eax, IpiVector); // fixed, physical destination
        a.mov(edx, 1); // x2APIC ID 1
        a.wrmsr();
        a.Label(ref seen);
        a.cmp(__dword_ptr[Seen], 1);
        a.jne(seen);
        a.mov(ecx, 0x830);
        a.mov(eax, 0x4500); // INIT, level assert
        a.mov(edx, 1);
        a.wrmsr();
        a.mov(eax, 0x4600 | (int)(Trampoline >> 12)); // start-up
        a.wrmsr();
        a.Label(ref started);
        a.cmp(__dword_ptr[Marker], unchecked((int)MarkerValue));
        a.jne(started);
        a.mov(dx, VirtualMachineBuilder.DefaultDebugExitPort);
        a.mov(al, 0);
        a.@out(dx, al);

        a.Label(ref ap);
        a.cli();
        a.mov(__dword_ptr[Ready], 1);
        a.Label(ref irr);
        a.mov(ecx, 0x820 + (IpiVector / 32)); // IRR bits for the vector's word
        a.rdmsr();
        a.test(eax, 1 << (IpiVector % 32));
        a.jz(irr);
        a.mov(__dword_ptr[Seen], 1);
        a.Label(ref spin);
        a.pause();
        a.jmp(spin);
    });

    /// <summary>Real-mode code at <see cref="Trampoline"/>: writes the marker (at a 32-bit address, through a segment) and spins.</summary>
    private static byte[] X2ApicTrampoline() => GuestProgram.Assemble(16, Trampoline, a =>
    {
        var spin = a.CreateLabel();
        a.mov(ax, (int)(Marker >> 4));
        a.mov(ds, ax);
        a.mov(__dword_ptr[(int)(Marker & 0xF)], unchecked((int)MarkerValue));
        a.Label(ref spin);
        a.pause();
        a.jmp(spin);
    });

    [Theory]
    [MemberData(nameof(Backends))]
    public async Task In_x2apic_mode_ipis_init_and_startup_go_through_the_icr_msr(string backend)
    {
        await using var vm = FlatGuestVm.Builder(backend)
            .WithVcpus(2)
            .WithInterruptController()
            .WithFlatBinary(X2ApicProgram(), new GuestAddress(Load))
            .WithFlatBinary(X2ApicTrampoline(), new GuestAddress(Trampoline))
            .WithEntryPoint(new GuestAddress(Load), StartMode.Long64)
            .WithDebugExit()
            .Build();
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
        timeout.CancelAfter(TimeSpan.FromMinutes(2));
        var exit = await vm.RunAsync(timeout.Token);

        // On failure: where each processor stopped and what they recorded.
        string where = string.Join("; ", Enumerable.Range(0, 2).Select(k => $"vCPU {k} at 0x{vm.GetRegisters(k).Rip:x}"))
            + "; results " + string.Join(" ", Enumerable.Range(0, 0x13).Select(k => $"{vm.Memory.Read<uint>(new GuestAddress(Results + (ulong)(k * 4))):x}"));
        Assert.True(exit.Reason == StopReason.DebugExit, $"{exit.Description}; {where}");
        for (uint i = 0; i < 2; i++)
        {
            var at = Results + (i * 16);
            Assert.Equal(i, vm.Memory.Read<uint>(new GuestAddress(at))); // x2APIC ID (MSR 0x802)
            Assert.Equal(i, vm.Memory.Read<uint>(new GuestAddress(at + 4))); // CPUID leaf 0xB EDX
            Assert.NotEqual(0u, vm.Memory.Read<uint>(new GuestAddress(at + 8)) & (1u << 21)); // CPUID leaf 1 ECX: x2APIC
        }

        Assert.Equal(MarkerValue, vm.Memory.Read<uint>(new GuestAddress(Marker)));
    }
}
