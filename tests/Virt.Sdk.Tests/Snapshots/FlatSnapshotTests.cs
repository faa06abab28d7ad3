using Virt.Boot;
using Virt.Devices;
using Virt.Testing;
using Xunit;
using static Iced.Intel.AssemblerRegisters;

namespace Virt.Sdk.Tests.Snapshots;

/// <summary>A flat guest saved mid-loop continues from the snapshot in a new VM, on the same backend and on the other one.</summary>
public sealed class FlatSnapshotTests
{
    private const ulong Load = 0x100000;
    private const ulong Counter = 0x50000;
    private const ushort GatePort = 0x91;

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    /// <summary>
    /// Counts to <paramref name="first"/>, polls the gate port until it opens (counting polls in R8), counts on to
    /// <paramref name="total"/> keeping the count in memory too, and exits with 7.
    /// </summary>
    private static byte[] Program(ulong first, ulong total) => GuestProgram.Assemble(64, Load, a =>
    {
        var one = a.CreateLabel();
        var wait = a.CreateLabel();
        var two = a.CreateLabel();
        a.xor(ecx, ecx);
        a.xor(r8d, r8d);
        a.Label(ref one);
        a.inc(rcx);
        a.mov(rax, first);
        a.cmp(rcx, rax);
        a.jb(one);
        a.mov(dx, GatePort);
        a.Label(ref wait);
        a.inc(r8);
        a.@in(al, dx);
        a.test(al, al);
        a.jz(wait);
        a.Label(ref two);
        a.inc(rcx);
        a.mov(__qword_ptr[Counter], rcx);
        a.mov(rax, total);
        a.cmp(rcx, rax);
        a.jb(two);
        a.mov(dx, VirtualMachineBuilder.DefaultDebugExitPort);
        a.mov(al, 7);
        a.@out(dx, al);
        a.hlt();
    });

    private const ulong First = 1_000, Total = 20_000;

    public static TheoryData<string, string> Pairs() => new()
    {
        { "interpreter", "interpreter" }, { "kvm", "kvm" }, { "kvm", "interpreter" }, { "interpreter", "kvm" },
    };

    private static VirtualMachineBuilder Builder(string backend, PollGate gate) => FlatGuestVm.Builder(backend)
        .WithDebugExit()
        .WithPortIoDevice(GatePort, 1, gate, "gate");

    [Theory]
    [MemberData(nameof(Pairs))]
    public async Task Guest_saved_while_polling_a_port_finishes_in_a_restored_vm(string from, string to)
    {
        using var dir = new TempDirectory();
        string path = Path.Combine(dir.Path, "flat.snap");
        var gate = new PollGate(open: false, 100);
        var builder = Builder(from, gate);
        if (to != from)
        {
            // A guest that is to move between backends is offered only what both offer.
            builder = CommonCpuid.Mask(builder, from, to);
        }

        ulong polls;
        await using (var vm = builder.WithFlatBinary(Program(First, Total), new GuestAddress(Load)).WithEntryPoint(new GuestAddress(Load), StartMode.Long64).Build())
        {
            await vm.StartAsync(Ct);
            await gate.Polled.Task.WaitAsync(TimeSpan.FromMinutes(2), Ct);
            await vm.PauseAsync(Ct);
            var regs = vm.GetRegisters(0);
            Assert.Equal(First, regs.Rcx);
            polls = regs.R8;
            Assert.True(polls >= 100, $"paused after {polls} polls");
            await vm.SaveSnapshotAsync(path, Ct);
            await vm.StopAsync(Ct);
        }

        var openGate = new PollGate(open: true, 100);
        await using var restored = await VirtualMachine.RestoreAsync(path, b => (to == "kvm" ? b.WithKvm() : b.WithInterpreter()).WithPortIoDevice(GatePort, 1, openGate, "gate"), Ct);
        Assert.Equal(VirtualMachineState.Paused, restored.State);
        Assert.Equal(to, restored.BackendSelection.Name);
        Assert.Equal(polls, restored.GetRegisters(0).R8);
        var exit = await restored.RunAsync(Ct);
        Assert.True(exit.Reason == StopReason.DebugExit && exit.ExitCode == 7, exit.Description);
        var end = restored.GetRegisters(0);
        Assert.Equal(Total, end.Rcx);
        // Every poll (one INC R8, one IN) was answered exactly once, by the saved VM's gate or, once, by the restored
        // one: none was repeated or lost. The pause may land between the INC and the IN, so the restored VM counts
        // 0 or 1 more polls.
        Assert.Equal(1, openGate.Reads);
        Assert.Equal(end.R8, (ulong)(gate.Reads + openGate.Reads));
        Assert.InRange(end.R8, polls, polls + 1);
        Assert.Equal(Total, restored.Memory.Read<ulong>(new GuestAddress(Counter)));
    }

    /// <summary>
    /// The interpreter's AVX state goes through a snapshot: a guest that enabled AVX (CR4.OSXSAVE, XCR0) and holds a
    /// value in the upper half of YMM5 is saved while it polls the gate, and the restored VM finds the value there and
    /// can still run AVX instructions.
    /// </summary>
    [Fact]
    public async Task The_upper_halves_of_the_ymm_registers_and_xcr0_survive_a_snapshot_on_the_interpreter()
    {
        const ulong Pattern = 0x0123456789ABCDEF;
        using var dir = new TempDirectory();
        string path = Path.Combine(dir.Path, "avx.snap");
        var program = GuestProgram.Assemble(64, Load, a =>
        {
            var wait = a.CreateLabel();
            a.mov(rax, cr4);
            a.or(rax, 1 << 18);
            a.mov(cr4, rax);
            a.xor(ecx, ecx);
            a.mov(eax, 7);
            a.xor(edx, edx);
            a.xsetbv();
            a.mov(rax, Pattern);
            a.vmovq(xmm5, rax);
            a.vpbroadcastq(ymm5, xmm5);
            a.vpxor(xmm5, xmm5, xmm5); // bits 127:0 cleared, and with them (a VEX write) bits 255:128
            a.vpbroadcastq(ymm6, __qword_ptr[Counter]);
            a.vinserti128(ymm5, ymm5, xmm6, 1); // YMM5 = Pattern in the upper half only
            a.mov(dx, GatePort);
            a.Label(ref wait);
            a.@in(al, dx);
            a.test(al, al);
            a.jz(wait);
            a.vextracti128(xmm7, ymm5, 1);
            a.vmovq(rbx, xmm7);
            a.mov(dx, VirtualMachineBuilder.DefaultDebugExitPort);
            a.mov(al, 7);
            a.@out(dx, al);
            a.hlt();
        });
        var gate = new PollGate(open: false, 100);
        await using (var vm = Builder("interpreter", gate).WithFlatBinary(program, new GuestAddress(Load)).WithEntryPoint(new GuestAddress(Load), StartMode.Long64).Build())
        {
            vm.Memory.Write(new GuestAddress(Counter), Pattern);
            await vm.StartAsync(Ct);
            await gate.Polled.Task.WaitAsync(TimeSpan.FromMinutes(2), Ct);
            await vm.PauseAsync(Ct);
            await vm.SaveSnapshotAsync(path, Ct);
            await vm.StopAsync(Ct);
        }

        var openGate = new PollGate(open: true, 100);
        await using var restored = await VirtualMachine.RestoreAsync(path, b => b.WithInterpreter().WithPortIoDevice(GatePort, 1, openGate, "gate"), Ct);
        var exit = await restored.RunAsync(Ct);
        Assert.True(exit.Reason == StopReason.DebugExit && exit.ExitCode == 7, exit.Description);
        Assert.Equal(Pattern, restored.GetRegisters(0).Rbx);
    }

    [Fact]
    public async Task A_restore_with_other_devices_than_the_saved_vm_is_refused_naming_them()
    {
        using var dir = new TempDirectory();
        string path = Path.Combine(dir.Path, "flat.snap");
        var gate = new PollGate(open: true, 100);
        await using (var vm = Builder("interpreter", gate).WithFlatBinary(Program(10, 20), new GuestAddress(Load)).WithEntryPoint(new GuestAddress(Load), StartMode.Long64).Build())
        {
            await vm.SaveSnapshotAsync(path, Ct);
        }

        var ex = await Assert.ThrowsAsync<InvalidOperationException>(() => VirtualMachine.RestoreAsync(path, b => b.WithInterpreter(), Ct));
        Assert.Contains("'gate'", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_restored_vm_that_never_ran_stops_and_disposes_at_once()
    {
        using var dir = new TempDirectory();
        string path = Path.Combine(dir.Path, "flat.snap");
        await using (var vm = Builder("interpreter", new PollGate(open: true, 100)).WithFlatBinary(Program(10, 20), new GuestAddress(Load)).WithEntryPoint(new GuestAddress(Load), StartMode.Long64).Build())
        {
            await vm.SaveSnapshotAsync(path, Ct);
        }

        await using (var restored = await VirtualMachine.RestoreAsync(path, b => b.WithInterpreter().WithPortIoDevice(GatePort, 1, new PollGate(open: true, 100), "gate"), Ct))
        {
            var exit = await restored.StopAsync(Ct).WaitAsync(TimeSpan.FromSeconds(30), Ct);
            Assert.Equal(StopReason.StoppedByHost, exit.Reason);
            Assert.Equal(VirtualMachineState.Stopped, restored.State);
        }

        // Without a backend of the caller's, the restore takes the one the VM was saved on.
        var disposed = await VirtualMachine.RestoreAsync(path, b => b.WithPortIoDevice(GatePort, 1, new PollGate(open: true, 100), "gate"), Ct);
        Assert.Equal("interpreter", disposed.BackendSelection.Name);
        await disposed.DisposeAsync().AsTask().WaitAsync(TimeSpan.FromSeconds(30), Ct);
    }

    [Fact]
    public async Task Saving_a_running_vm_is_refused_with_what_to_do()
    {
        using var dir = new TempDirectory();
        await using var vm = Builder("interpreter", new PollGate(open: false, 100)).WithFlatBinary(Program(10, 20), new GuestAddress(Load)).WithEntryPoint(new GuestAddress(Load), StartMode.Long64).Build();
        await vm.StartAsync(Ct);
        var ex = await Assert.ThrowsAsync<InvalidOperationException>(() => vm.SaveSnapshotAsync(Path.Combine(dir.Path, "x.snap"), Ct));
        Assert.Contains("PauseAsync", ex.Message, StringComparison.Ordinal);
        await vm.StopAsync(Ct);
    }
}

/// <summary>Masks the CPUID features one backend offers and another does not, so a guest can move between them.</summary>
internal static class CommonCpuid
{
    public static VirtualMachineBuilder Mask(VirtualMachineBuilder builder, string a, string b)
    {
        var offeredA = Offered(a);
        var offeredB = Offered(b);
        foreach (var (function, index, register) in MachineDescriptionView.FeatureRegisters)
        {
            uint onlyOne = Word(offeredA, function, index, register) ^ Word(offeredB, function, index, register);
            for (int bit = 0; bit < 32; bit++)
            {
                if ((onlyOne & (1u << bit)) != 0)
                {
                    builder = builder.WithoutCpuidFeature(new Virt.Cpu.CpuidFeature(function, index, register, bit));
                }
            }
        }

        return builder;
    }

    private static IReadOnlyList<Virt.Cpu.CpuidEntry> Offered(string backend)
    {
        using var memory = Virt.Memory.GuestMemory.CreateRam(1 << 20);
        using var partition = BackendSelector.Create(backend == "kvm" ? BackendKind.Kvm : BackendKind.Interpreter).CreatePartition(memory, new Virt.Cpu.PartitionOptions());
        return [.. partition.SupportedCpuid];
    }

    private static uint Word(IReadOnlyList<Virt.Cpu.CpuidEntry> cpuid, uint function, uint index, Virt.Cpu.CpuidRegister register)
    {
        var e = cpuid.FirstOrDefault(c => c.Function == function && ((c.Flags & Virt.Cpu.CpuidEntry.SignificantIndex) == 0 || c.Index == index));
        return register switch
        {
            Virt.Cpu.CpuidRegister.Eax => e.Eax,
            Virt.Cpu.CpuidRegister.Ebx => e.Ebx,
            Virt.Cpu.CpuidRegister.Ecx => e.Ecx,
            _ => e.Edx,
        };
    }
}

/// <summary>The feature registers a snapshot compares (as in the SDK's machine description).</summary>
internal static class MachineDescriptionView
{
    public static readonly (uint Function, uint Index, Virt.Cpu.CpuidRegister Register)[] FeatureRegisters =
    [
        (1, 0, Virt.Cpu.CpuidRegister.Ecx), (1, 0, Virt.Cpu.CpuidRegister.Edx), (7, 0, Virt.Cpu.CpuidRegister.Ebx), (7, 0, Virt.Cpu.CpuidRegister.Ecx),
        (7, 0, Virt.Cpu.CpuidRegister.Edx), (0x8000_0001, 0, Virt.Cpu.CpuidRegister.Ecx), (0x8000_0001, 0, Virt.Cpu.CpuidRegister.Edx),
    ];
}
