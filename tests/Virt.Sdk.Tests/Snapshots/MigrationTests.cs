using System.Net;
using System.Net.Sockets;
using Virt.Boot;
using Virt.Devices;
using Virt.Snapshots;
using Virt.Testing;
using Xunit;
using static Iced.Intel.AssemblerRegisters;

namespace Virt.Sdk.Tests.Snapshots;

/// <summary>A guest that keeps writing memory moves to another VM through a socket while it runs, and loses no write.</summary>
public sealed class MigrationTests
{
    private const ulong Load = 0x100000;
    private const ulong Area = 0x200000;
    private const int Pages = 256;
    private const ushort GatePort = 0x91;

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    /// <summary>
    /// Pass after pass adds 1 to the first quadword of each of <see cref="Pages"/> pages and counts passes in RCX; when
    /// the gate opens it checks every page holds the pass count (exit 7) or not (exit 8). A write lost on the way from
    /// one VM to the other leaves a page behind.
    /// </summary>
    private static byte[] Program() => GuestProgram.Assemble(64, Load, a =>
    {
        var pass = a.CreateLabel();
        var fill = a.CreateLabel();
        var check = a.CreateLabel();
        var bad = a.CreateLabel();
        a.xor(ecx, ecx);
        a.mov(dx, GatePort);
        a.Label(ref pass);
        a.inc(rcx);
        a.mov(rdi, Area);
        a.mov(esi, Pages);
        a.Label(ref fill);
        a.inc(__qword_ptr[rdi]);
        a.add(rdi, 4096);
        a.dec(esi);
        a.jnz(fill);
        a.@in(al, dx);
        a.test(al, al);
        a.jz(pass);
        a.mov(rdi, Area);
        a.mov(esi, Pages);
        a.Label(ref check);
        a.cmp(__qword_ptr[rdi], rcx);
        a.jne(bad);
        a.add(rdi, 4096);
        a.dec(esi);
        a.jnz(check);
        a.mov(dx, VirtualMachineBuilder.DefaultDebugExitPort);
        a.mov(al, 7);
        a.@out(dx, al);
        a.hlt();
        a.Label(ref bad);
        a.mov(dx, VirtualMachineBuilder.DefaultDebugExitPort);
        a.mov(al, 8);
        a.@out(dx, al);
        a.hlt();
    });

    public static TheoryData<string, bool> Cases() => new()
    {
        { "interpreter", true }, { "interpreter", false }, { "kvm", true }, { "kvm", false },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public async Task A_guest_writing_memory_moves_through_a_socket_and_loses_no_write(string backend, bool dirtyPageTracking)
    {
        var gate = new PollGate(open: false, 50);
        await using var source = FlatGuestVm.Builder(backend)
            .WithDirtyPageTracking(dirtyPageTracking)
            .WithDebugExit()
            .WithPortIoDevice(GatePort, 1, gate, "gate")
            .WithFlatBinary(Program(), new GuestAddress(Load))
            .WithEntryPoint(new GuestAddress(Load), StartMode.Long64)
            .Build();
        await source.StartAsync(Ct);
        await gate.Polled.Task.WaitAsync(TimeSpan.FromMinutes(2), Ct);

        var (sending, receiving) = await ConnectedPairAsync();
        using var _ = sending;
        using var __ = receiving;
        var openGate = new PollGate(open: true, 50);
        var receive = Task.Run(() => VirtualMachine.ReceiveMigrationAsync(receiving, b => (backend == "kvm" ? b.WithKvm() : b.WithInterpreter()).WithPortIoDevice(GatePort, 1, openGate, "gate"), Ct), Ct);
        var report = await source.MigrateAsync(sending, new MigrationOptions { StopAndCopyPages = 16 }, Ct);
        await using var destination = await receive.WaitAsync(TimeSpan.FromMinutes(2), Ct);

        Assert.Equal(VirtualMachineState.Paused, source.State);
        Assert.Equal(VirtualMachineState.Paused, destination.State);
        Assert.Equal(dirtyPageTracking, report.PreCopy);
        Assert.True(report.Rounds >= (dirtyPageTracking ? 2 : 1), $"{report}");
        Assert.True(report.PagesSent >= Pages, $"{report}");
        Assert.True(report.Downtime <= report.Duration, $"{report}");

        // The destination holds what the source held when it paused: registers and every page of the area.
        var regs = source.GetRegisters(0);
        Assert.Equal(regs.Rip, destination.GetRegisters(0).Rip);
        Assert.Equal(regs.Rcx, destination.GetRegisters(0).Rcx);
        var expected = new byte[Pages * 4096];
        var actual = new byte[Pages * 4096];
        source.Memory.Read(new GuestAddress(Area), expected);
        destination.Memory.Read(new GuestAddress(Area), actual);
        Assert.True(expected.AsSpan().SequenceEqual(actual), "guest memory differs after the migration");

        var exit = await destination.RunAsync(Ct);
        Assert.True(exit.Reason == StopReason.DebugExit && exit.ExitCode == 7, exit.Description);
    }

    [Fact]
    public async Task A_stream_that_ends_early_or_is_not_a_migration_is_refused_naming_why()
    {
        var notMigration = await Assert.ThrowsAsync<SnapshotFormatException>(() => VirtualMachine.ReceiveMigrationAsync(new MemoryStream(new byte[64]), null, Ct));
        Assert.Contains("VIRTMIGR", notMigration.Message, StringComparison.Ordinal);

        // A real stream cut after the pages, before the machine state.
        await using var vm = FlatGuestVm.Builder("interpreter").WithFlatBinary(Program(), new GuestAddress(Load)).WithEntryPoint(new GuestAddress(Load), StartMode.Long64).Build();
        var full = new MemoryStream();
        await vm.MigrateAsync(full, cancellationToken: Ct);
        var bytes = full.ToArray();
        var cut = await Assert.ThrowsAsync<SnapshotFormatException>(() => VirtualMachine.ReceiveMigrationAsync(new MemoryStream(bytes[..^100]), b => b.WithInterpreter(), Ct));
        Assert.Contains("ended", cut.Message, StringComparison.Ordinal);

        // Random corruption anywhere gives a refusal that names the stream's or the state's field, never another exception.
        var random = new Random(77);
        for (int i = 0; i < 200; i++)
        {
            var copy = (byte[])bytes.Clone();
            int at = random.Next(copy.Length);
            copy[at] ^= (byte)(1 << random.Next(8));
            try
            {
                await using var restored = await VirtualMachine.ReceiveMigrationAsync(new MemoryStream(copy), b => b.WithInterpreter(), Ct);
            }
            catch (SnapshotFormatException)
            {
            }
        }
    }

    private static async Task<(NetworkStream Sending, NetworkStream Receiving)> ConnectedPairAsync()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        var client = new TcpClient();
        var accept = listener.AcceptTcpClientAsync(Ct).AsTask();
        await client.ConnectAsync(IPAddress.Loopback, ((IPEndPoint)listener.LocalEndpoint).Port, Ct);
        var server = await accept;
        return (new NetworkStream(client.Client, ownsSocket: true), new NetworkStream(server.Client, ownsSocket: true));
    }
}
