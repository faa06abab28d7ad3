using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using Iced.Intel;
using Virt.Boot;
using Virt.Network;
using Virt.Storage;
using Virt.Testing;
using Xunit;
using static Iced.Intel.AssemblerRegisters;

namespace Virt.Sdk.Tests;

/// <summary>A stopped VM started again runs from a cold reset: memory reloaded, devices new, vCPUs at their start state.</summary>
public sealed class ColdResetTests
{
    private const ulong Load = 0x100000;
    private const ulong Data = Load + 0x2000; // RAM past the image: zero when the VM is built

    public static TheoryData<string> Backends => FlatGuestVm.Backends;

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    /// <summary>
    /// Increments the byte at <see cref="Data"/>, adds RBX (0 at the start state) to it, plants 0x40 in RBX and stops
    /// with the sum as the exit code: 1 on a fresh machine; 2 or more if memory or registers survived a run.
    /// </summary>
    private static byte[] CountingGuest() => GuestProgram.Assemble(64, Load, a =>
    {
        a.mov(rsi, Data);
        a.inc(__byte_ptr[rsi]);
        a.mov(al, __byte_ptr[rsi]);
        a.add(al, bl);
        a.mov(ebx, 0x40);
        a.mov(dx, VirtualMachineBuilder.DefaultDebugExitPort);
        a.@out(dx, al);
        a.hlt();
    });

    [Theory]
    [MemberData(nameof(Backends))]
    public async Task A_guest_that_stopped_itself_runs_again_from_its_initial_state(string backend)
    {
        byte[] code = CountingGuest();
        await using var vm = FlatGuestVm.Builder(backend)
            .WithFlatBinary(code, new GuestAddress(Load))
            .WithEntryPoint(new GuestAddress(Load), StartMode.Long64)
            .WithDebugExit()
            .Build();
        var states = new ConcurrentQueue<(VirtualMachineState, VirtualMachineState)>();
        vm.StateChanged += (_, e) => states.Enqueue((e.OldState, e.NewState));

        var first = await vm.RunAsync(Ct);
        Assert.Equal(StopReason.DebugExit, first.Reason);
        Assert.Equal(1, first.ExitCode);
        Assert.Equal(1, ReadByte(vm, Data));
        Assert.Same(first, vm.Exit);

        var second = await vm.RunAsync(Ct);
        Assert.Equal(StopReason.DebugExit, second.Reason);
        Assert.Equal(1, second.ExitCode); // not 2 (memory kept) nor 0x42 (RBX kept)
        Assert.Equal(
            [
                (VirtualMachineState.Created, VirtualMachineState.Running), (VirtualMachineState.Running, VirtualMachineState.Stopped),
                (VirtualMachineState.Stopped, VirtualMachineState.Created),
                (VirtualMachineState.Created, VirtualMachineState.Running), (VirtualMachineState.Running, VirtualMachineState.Stopped),
            ],
            states);
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public async Task ResetAsync_reloads_the_image_and_clears_the_rest_of_memory(string backend)
    {
        byte[] code = CountingGuest();
        await using var vm = FlatGuestVm.Builder(backend)
            .WithFlatBinary(code, new GuestAddress(Load))
            .WithEntryPoint(new GuestAddress(Load), StartMode.Long64)
            .WithDebugExit()
            .Build();
        await vm.ResetAsync(Ct); // a Created VM: nothing to do
        Assert.Equal(VirtualMachineState.Created, vm.State);
        await vm.RunAsync(Ct);

        // The host scribbles over the code too; the reset brings the image back.
        vm.Memory.Write(new GuestAddress(Load), new byte[code.Length]);
        Assert.Equal(1, ReadByte(vm, Data));
        await vm.ResetAsync(Ct);

        Assert.Equal(VirtualMachineState.Created, vm.State);
        Assert.Null(vm.Exit);
        byte[] reloaded = new byte[code.Length];
        vm.Memory.Read(new GuestAddress(Load), reloaded);
        Assert.Equal(code, reloaded);
        Assert.Equal(0, ReadByte(vm, Data));
        Assert.Equal(Load, vm.GetRegisters(0).Rip);
        Assert.Equal(0UL, vm.GetRegisters(0).Rbx);
        Assert.Equal(1, (await vm.RunAsync(Ct)).ExitCode);
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public async Task A_guest_the_host_stopped_starts_again_and_can_be_stopped_again(string backend)
    {
        var console = new CharacterSignal('x');
        byte[] code = GuestProgram.Assemble(64, Load, a =>
        {
            var spin = a.CreateLabel();
            a.mov(dx, 0x3F8);
            a.mov(al, (byte)'x');
            a.@out(dx, al);
            a.Label(ref spin);
            a.pause();
            a.jmp(spin);
        });
        await using var vm = FlatGuestVm.Builder(backend)
            .WithFlatBinary(code, new GuestAddress(Load))
            .WithEntryPoint(new GuestAddress(Load), StartMode.Long64)
            .WithSerialConsole(console)
            .Build();

        for (int run = 1; run <= 2; run++)
        {
            var running = vm.RunAsync(Ct);
            await console.WaitAsync(run, Ct); // the guest printed, so it runs
            var exit = await vm.StopAsync(Ct);
            Assert.Equal(StopReason.StoppedByHost, exit.Reason);
            Assert.Same(exit, await running);
            Assert.Equal(VirtualMachineState.Stopped, vm.State);
        }
    }

    /// <summary>
    /// A guest with a virtio disk writes and flushes a block, then stops itself; the same VM started again is a new
    /// machine (memory reloaded, a new virtio-blk device that the guest's driver sets up from scratch) on the same
    /// disk image, and the guest finds there what it wrote before the reset.
    /// </summary>
    [Theory]
    [MemberData(nameof(Backends))]
    public async Task A_guest_that_stopped_itself_runs_again_with_its_disk_from_a_cold_reset(string backend)
    {
        var wait = TimeSpan.FromMinutes(1);
        using var dir = new TempDirectory();
        string disk = Path.Combine(dir.Path, "disk.raw");
        DiskImage.CreateRaw(disk, 1 << 20);
        var console = new TranscriptStream();
        await using var vm = FlatGuestVm.Builder(backend)
            .WithFlatBinary(VirtioBlockGuest.Image, new GuestAddress(VirtioBlockGuest.Load))
            .WithEntryPoint(new GuestAddress(VirtioBlockGuest.Load), StartMode.Long64)
            .WithSerialConsole(console)
            .WithVirtioBlock(disk)
            .WithDebugExit()
            .Build();
        Task Command(char c) => vm.WriteToSerialConsoleAsync(new[] { (byte)c }, Ct);

        await vm.StartAsync(Ct);
        await console.WaitForAsync(VirtioBlockGuest.Ready + "00000000\n", wait, Ct);
        await Command('w');
        await console.WaitForAsync(VirtioBlockGuest.Wrote(1), wait, Ct);
        await Command('q');
        var first = await vm.WaitForExitAsync(Ct);
        Assert.True(first.Reason == StopReason.DebugExit && first.ExitCode == 1, first.Description);

        for (uint run = 2; run <= 3; run++)
        {
            await vm.StartAsync(Ct); // a stopped VM: reset cold, then started
            await console.WaitForAsync(VirtioBlockGuest.Ready + $"{run - 1:x8}\n", wait, Ct);
            await Command('r');
            await console.WaitForAsync(VirtioBlockGuest.Read(run - 1, run - 1), wait, Ct);
            await Command('w');
            await console.WaitForAsync(VirtioBlockGuest.Wrote(run), wait, Ct);
            await Command('q');
            var exit = await vm.WaitForExitAsync(Ct);
            Assert.True(exit.Reason == StopReason.DebugExit && exit.ExitCode == (int)run, $"run {run}: {exit.Description}");
        }

        Assert.DoesNotContain("error", console.Text, StringComparison.Ordinal);
        await vm.DisposeAsync();
        var image = await File.ReadAllBytesAsync(disk, Ct);
        Assert.Equal(VirtioBlockGuest.Pattern(3), image[..VirtioBlockGuest.BlockBytes]);
    }

    [Fact]
    public async Task Devices_are_created_again_after_the_old_ones_released_what_they_held()
    {
        // A forwarded host port and a locked disk image: the new machine binds and opens them again, which only
        // works when the old machine gave them up first.
        using var dir = new TempDirectory();
        string disk = Path.Combine(dir.Path, "disk.raw");
        DiskImage.CreateRaw(disk, 1 << 20);

        int port;
        using (var probe = new TcpListener(IPAddress.Loopback, 0))
        {
            probe.Start();
            port = ((IPEndPoint)probe.LocalEndpoint).Port;
        }

        await using var vm = FlatGuestVm.Builder("interpreter")
            .WithFlatBinary(CountingGuest(), new GuestAddress(Load))
            .WithEntryPoint(new GuestAddress(Load), StartMode.Long64)
            .WithDebugExit()
            .WithVirtioBlock(disk)
            .WithUserNetwork(new UserModeNetworkOptions { TcpForwards = [new UserNetworkTcpForward(new IPEndPoint(IPAddress.Loopback, port), 80)] })
            .Build();
        var firstDisk = vm.VirtioDevices;
        Assert.Equal(1, (await vm.RunAsync(Ct)).ExitCode);
        Assert.Equal(1, (await vm.RunAsync(Ct)).ExitCode);
        Assert.Equal(firstDisk, vm.VirtioDevices); // same places
        using var client = new TcpClient();
        await client.ConnectAsync(IPAddress.Loopback, port, Ct); // the new network listens on the forwarded port
    }

    [Fact]
    public async Task A_vm_restored_from_a_snapshot_cannot_be_reset_and_says_why()
    {
        using var dir = new TempDirectory();
        string path = Path.Combine(dir.Path, "vm.snap");
        await using (var vm = FlatGuestVm.Builder("interpreter")
            .WithFlatBinary(CountingGuest(), new GuestAddress(Load))
            .WithEntryPoint(new GuestAddress(Load), StartMode.Long64)
            .WithDebugExit()
            .Build())
        {
            await vm.SaveSnapshotAsync(path, Ct);
        }

        await using var restored = await VirtualMachine.RestoreAsync(path, b => b.WithInterpreter(), Ct);
        var early = await Assert.ThrowsAsync<InvalidOperationException>(() => restored.ResetAsync(Ct));
        Assert.Contains("snapshot", early.Message, StringComparison.Ordinal);
        await restored.ResumeAsync(Ct);
        Assert.Equal(1, (await restored.WaitForExitAsync(Ct)).ExitCode);

        var again = await Assert.ThrowsAsync<InvalidOperationException>(() => restored.RunAsync(Ct));
        Assert.Contains($"The VM '{restored.Name}' cannot be started again: it was restored from a snapshot", again.Message, StringComparison.Ordinal);
        Assert.Equal(VirtualMachineState.Stopped, restored.State);
    }

    [Fact]
    public async Task A_running_vm_is_not_reset()
    {
        var console = new CharacterSignal('x');
        byte[] code = GuestProgram.Assemble(64, Load, a =>
        {
            var spin = a.CreateLabel();
            a.mov(dx, 0x3F8);
            a.mov(al, (byte)'x');
            a.@out(dx, al);
            a.Label(ref spin);
            a.pause();
            a.jmp(spin);
        });
        await using var vm = FlatGuestVm.Builder("interpreter")
            .WithFlatBinary(code, new GuestAddress(Load))
            .WithEntryPoint(new GuestAddress(Load), StartMode.Long64)
            .WithSerialConsole(console)
            .Build();
        await vm.StartAsync(Ct);
        await console.WaitAsync(1, Ct);
        var e = await Assert.ThrowsAsync<InvalidOperationException>(() => vm.ResetAsync(Ct));
        Assert.Contains("while it is Running; it must be Stopped", e.Message, StringComparison.Ordinal);
        await Assert.ThrowsAsync<InvalidOperationException>(() => vm.StartAsync(Ct));
        await vm.StopAsync(Ct);
    }

    private static byte ReadByte(VirtualMachine vm, ulong address)
    {
        Span<byte> b = stackalloc byte[1];
        vm.Memory.Read(new GuestAddress(address), b);
        return b[0];
    }

    /// <summary>A serial console that counts one character and lets a test wait for its n-th appearance.</summary>
    private sealed class CharacterSignal(char watched) : TextWriter
    {
        private readonly SemaphoreSlim _seen = new(0);

        public override System.Text.Encoding Encoding => System.Text.Encoding.ASCII;

        public override void Write(char value)
        {
            if (value == watched)
            {
                _seen.Release();
            }
        }

        /// <summary>Waits for one more appearance (the n-th overall when called in order).</summary>
        public async Task WaitAsync(int n, CancellationToken cancellationToken)
        {
            _ = n;
            Assert.True(await _seen.WaitAsync(TimeSpan.FromMinutes(2), cancellationToken), $"The guest did not print '{watched}' (run {n}).");
        }

        protected override void Dispose(bool disposing)
        {
            if (disposing)
            {
                _seen.Dispose();
            }

            base.Dispose(disposing);
        }
    }
}
