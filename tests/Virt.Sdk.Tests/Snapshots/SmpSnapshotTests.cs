using Virt.Boot;
using Virt.Cpu;
using Virt.Snapshots;
using Virt.Testing;
using Xunit;
using static Iced.Intel.AssemblerRegisters;

namespace Virt.Sdk.Tests.Snapshots;

/// <summary>
/// Flat guests with two vCPUs and the interrupt controllers, saved mid-run and restored on the same backend: both
/// processors go on from where they were, and one still waiting for its start-up IPI at the save starts from one sent
/// after the restore.
/// </summary>
public sealed class SmpSnapshotTests
{
    private const ulong Load = 0x100000;
    private const ulong Counter = 0x200000;
    private const ushort GatePort = 0x91;
    private const int Iterations = 3000;
    private const int Vcpus = 2;

    /// <summary>Where the application processor starts after the start-up IPI: vector 0x10, real mode CS = 0x1000.</summary>
    private const ulong Trampoline = 0x10000;
    private const byte StartupVector = (byte)(Trampoline >> 12);

    /// <summary>What the started processor writes at <see cref="Marker"/> (and its CS right after).</summary>
    private const ulong Marker = Trampoline + 0x1000;
    private const uint MarkerValue = 0x5A5A_0001;

    private const ulong Apic = 0xFEE00000;
    private const int ApicIcrLow = 0x300, ApicIcrHigh = 0x310, ApicSvr = 0xF0;

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    public static TheoryData<string> Backends => FlatGuestVm.Backends;

    /// <summary>
    /// Every vCPU adds 1 to the shared counter <see cref="Iterations"/> times with LOCK XADD, polls the gate until it
    /// opens, adds <see cref="Iterations"/> more; vCPU 0 waits for the whole total and exits with 0.
    /// </summary>
    private static byte[] CounterProgram() => GuestProgram.Assemble(64, Load, a =>
    {
        var first = a.CreateLabel();
        var gate = a.CreateLabel();
        var second = a.CreateLabel();
        var wait = a.CreateLabel();
        var spin = a.CreateLabel();
        a.mov(ecx, Iterations);
        a.Label(ref first);
        a.mov(eax, 1);
        a.@lock.xadd(__dword_ptr[Counter], eax);
        a.dec(ecx);
        a.jnz(first);
        a.mov(dx, GatePort);
        a.Label(ref gate);
        a.@in(al, dx);
        a.test(al, al);
        a.jz(gate);
        a.mov(ecx, Iterations);
        a.Label(ref second);
        a.mov(eax, 1);
        a.@lock.xadd(__dword_ptr[Counter], eax);
        a.dec(ecx);
        a.jnz(second);
        a.test(edi, edi); // the builder puts each vCPU's index in RDI
        a.jnz(spin);
        a.Label(ref wait);
        a.cmp(__dword_ptr[Counter], Vcpus * 2 * Iterations);
        a.jb(wait);
        a.mov(dx, VirtualMachineBuilder.DefaultDebugExitPort);
        a.mov(al, 0);
        a.@out(dx, al);
        a.Label(ref spin);
        a.pause();
        a.jmp(spin);
    });

    [Theory]
    [MemberData(nameof(Backends))]
    public async Task Two_vcpus_adding_to_a_shared_counter_saved_mid_run_end_exact_after_the_restore(string backend)
    {
        using var dir = new TempDirectory();
        string path = Path.Combine(dir.Path, "smp.snap");
        var gate = new PollGate(open: false, 200);
        uint atSave;
        await using (var vm = FlatGuestVm.Builder(backend)
            .WithVcpus(Vcpus)
            .WithInterruptController()
            .WithDebugExit()
            .WithPortIoDevice(GatePort, 1, gate, "gate")
            .WithFlatBinary(CounterProgram(), new GuestAddress(Load))
            .WithEntryPoint(new GuestAddress(Load), StartMode.Long64)
            .Build())
        {
            await vm.StartAsync(Ct);
            await gate.Polled.Task.WaitAsync(TimeSpan.FromMinutes(2), Ct);
            await vm.PauseAsync(Ct);
            atSave = vm.Memory.Read<uint>(new GuestAddress(Counter));
            await vm.SaveSnapshotAsync(path, Ct);
            await vm.StopAsync(Ct);
        }

        // A processor that polls has done its first half; the second halves start only when the gate opens.
        Assert.InRange(atSave, (uint)Iterations, (uint)(Vcpus * Iterations));
        await using var restored = await VirtualMachine.RestoreAsync(path, b => b.WithPortIoDevice(GatePort, 1, new PollGate(open: true, 1), "gate"), Ct);
        Assert.Equal(backend, restored.BackendSelection.Name);
        Assert.Equal(Vcpus, restored.VcpuCount);
        Assert.Equal(atSave, restored.Memory.Read<uint>(new GuestAddress(Counter)));
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(Ct);
        timeout.CancelAfter(TimeSpan.FromMinutes(2));
        var exit = await restored.RunAsync(timeout.Token);
        Assert.True(exit.Reason == StopReason.DebugExit && exit.ExitCode == 0, exit.Description);
        Assert.Equal((uint)(Vcpus * 2 * Iterations), restored.Memory.Read<uint>(new GuestAddress(Counter)));
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public async Task Two_vcpus_adding_to_a_shared_counter_migrate_mid_run_and_end_exact(string backend)
    {
        var gate = new PollGate(open: false, 200);
        await using var source = FlatGuestVm.Builder(backend)
            .WithVcpus(Vcpus)
            .WithInterruptController()
            .WithDirtyPageTracking(true)
            .WithDebugExit()
            .WithPortIoDevice(GatePort, 1, gate, "gate")
            .WithFlatBinary(CounterProgram(), new GuestAddress(Load))
            .WithEntryPoint(new GuestAddress(Load), StartMode.Long64)
            .Build();
        await source.StartAsync(Ct);
        await gate.Polled.Task.WaitAsync(TimeSpan.FromMinutes(2), Ct);

        var (sending, receiving) = await MigrationTests.ConnectedPairAsync();
        using var _ = sending;
        using var __ = receiving;
        var receive = Task.Run(() => VirtualMachine.ReceiveMigrationAsync(receiving, b => b.WithPortIoDevice(GatePort, 1, new PollGate(open: true, 1), "gate"), Ct), Ct);
        await source.MigrateAsync(sending, new MigrationOptions(), Ct);
        await using var destination = await receive.WaitAsync(TimeSpan.FromMinutes(2), Ct);

        Assert.Equal(VirtualMachineState.Paused, destination.State);
        Assert.Equal(Vcpus, destination.VcpuCount);
        for (int i = 0; i < Vcpus; i++)
        {
            Assert.Equal(source.GetRegisters(i).Rip, destination.GetRegisters(i).Rip);
            Assert.Equal(source.GetRegisters(i).Rcx, destination.GetRegisters(i).Rcx);
        }

        Assert.Equal(source.Memory.Read<uint>(new GuestAddress(Counter)), destination.Memory.Read<uint>(new GuestAddress(Counter)));
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(Ct);
        timeout.CancelAfter(TimeSpan.FromMinutes(2));
        var exit = await destination.RunAsync(timeout.Token);
        Assert.True(exit.Reason == StopReason.DebugExit && exit.ExitCode == 0, exit.Description);
        Assert.Equal((uint)(Vcpus * 2 * Iterations), destination.Memory.Read<uint>(new GuestAddress(Counter)));
    }

    /// <summary>
    /// vCPU 0 enables its local APIC, sends vCPU 1 an INIT (vCPU 1 then waits for a start-up IPI), polls the gate until it
    /// opens, sends a start-up IPI with <see cref="StartupVector"/>, waits for the marker the started processor writes
    /// and exits with 0. vCPU 1 spins until the INIT takes it.
    /// </summary>
    private static byte[] StartupProgram() => GuestProgram.Assemble(64, Load, a =>
    {
        var ap = a.CreateLabel();
        var gate = a.CreateLabel();
        var wait = a.CreateLabel();
        a.test(edi, edi);
        a.jnz(ap);
        a.mov(rbx, Apic);
        a.mov(__dword_ptr[rbx + ApicSvr], 0x1FF);
        a.mov(__dword_ptr[rbx + ApicIcrHigh], 1 << 24); // APIC ID 1
        a.mov(__dword_ptr[rbx + ApicIcrLow], 0x4500); // INIT, level assert
        a.mov(dx, GatePort);
        a.Label(ref gate);
        a.@in(al, dx);
        a.test(al, al);
        a.jz(gate);
        a.mov(__dword_ptr[rbx + ApicIcrHigh], 1 << 24);
        a.mov(__dword_ptr[rbx + ApicIcrLow], 0x4600 | StartupVector); // start-up
        a.Label(ref wait);
        a.cmp(__dword_ptr[Marker], unchecked((int)MarkerValue));
        a.jne(wait);
        a.mov(dx, VirtualMachineBuilder.DefaultDebugExitPort);
        a.mov(al, 0);
        a.@out(dx, al);
        a.Label(ref ap);
        a.pause();
        a.jmp(ap);
    });

    /// <summary>Real-mode code at <see cref="Trampoline"/>: writes the marker and its CS into the page after it, then spins.</summary>
    private static byte[] TrampolineProgram() => GuestProgram.Assemble(16, Trampoline, a =>
    {
        var spin = a.CreateLabel();
        a.mov(ax, cs);
        a.mov(ds, ax);
        a.mov(__word_ptr[0x1004], ax);
        a.mov(__dword_ptr[0x1000], unchecked((int)MarkerValue));
        a.Label(ref spin);
        a.pause();
        a.jmp(spin);
    });

    [Theory]
    [MemberData(nameof(Backends))]
    public async Task A_processor_waiting_for_its_startup_ipi_at_the_save_starts_from_one_sent_after_the_restore(string backend)
    {
        using var dir = new TempDirectory();
        string path = Path.Combine(dir.Path, "sipi.snap");
        var gate = new PollGate(open: false, 50);
        await using (var vm = FlatGuestVm.Builder(backend)
            .WithVcpus(Vcpus)
            .WithInterruptController()
            .WithDebugExit()
            .WithPortIoDevice(GatePort, 1, gate, "gate")
            .WithFlatBinary(StartupProgram(), new GuestAddress(Load))
            .WithFlatBinary(TrampolineProgram(), new GuestAddress(Trampoline))
            .WithEntryPoint(new GuestAddress(Load), StartMode.Long64)
            .Build())
        {
            await vm.StartAsync(Ct);
            await gate.Polled.Task.WaitAsync(TimeSpan.FromMinutes(2), Ct);
            await vm.PauseAsync(Ct);
            await vm.SaveSnapshotAsync(path, Ct);
            await vm.StopAsync(Ct);
        }

        Assert.Equal(StartupWait.StartupIpi, ReadVcpuState(path, 1).StartupWait);
        Assert.Equal(StartupWait.None, ReadVcpuState(path, 0).StartupWait);
        await using var restored = await VirtualMachine.RestoreAsync(path, b => b.WithPortIoDevice(GatePort, 1, new PollGate(open: true, 1), "gate"), Ct);
        Assert.Equal(0u, restored.Memory.Read<uint>(new GuestAddress(Marker)));
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(Ct);
        timeout.CancelAfter(TimeSpan.FromMinutes(2));
        var exit = await restored.RunAsync(timeout.Token);
        Assert.True(exit.Reason == StopReason.DebugExit && exit.ExitCode == 0, exit.Description);
        Assert.Equal(MarkerValue, restored.Memory.Read<uint>(new GuestAddress(Marker)));
        Assert.Equal((ushort)(Trampoline >> 4), restored.Memory.Read<ushort>(new GuestAddress(Marker + 4)));
    }

    [Fact]
    public void A_vcpu_section_of_layout_1_reads_as_a_processor_that_does_not_wait()
    {
        var state = new VcpuState
        {
            General = new GeneralRegisters { Rip = 0x1234, Rflags = 2 },
            Special = default,
            Xsave = XsaveState.FromFpu(FpuState.Initial),
            StartupWait = StartupWait.StartupIpi,
        };
        var w = new StateWriter();
        VcpuStateCodec.Write(w, state);
        byte[] v2 = w.WrittenMemory.ToArray();
        var r = new StateReader(v2, "vcpu1");
        Assert.Equal(StartupWait.StartupIpi, VcpuStateCodec.Read(ref r, 2).StartupWait);

        // Layout 1 is layout 2 without the last byte.
        var r1 = new StateReader(v2.AsMemory(0, v2.Length - 1).ToArray(), "vcpu1");
        var old = VcpuStateCodec.Read(ref r1, 1);
        Assert.Equal(StartupWait.None, old.StartupWait);
        Assert.Equal(0x1234UL, old.General.Rip);

        v2[^1] = 7;
        var ex = Assert.Throws<SnapshotFormatException>(() => ReadSection(v2, 2));
        Assert.Contains("startup wait", ex.Message, StringComparison.Ordinal);
    }

    private static VcpuState ReadSection(byte[] data, int version)
    {
        var r = new StateReader(data, "vcpu1");
        return VcpuStateCodec.Read(ref r, version);
    }

    private static VcpuState ReadVcpuState(string path, int index)
    {
        using var reader = SnapshotReader.Open(path);
        string name = VcpuStateCodec.SectionName(index);
        var r = new StateReader(reader.ReadState(name), name);
        return VcpuStateCodec.Read(ref r, reader.GetSection(name).Version);
    }
}
