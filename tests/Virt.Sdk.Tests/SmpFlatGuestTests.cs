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
}
