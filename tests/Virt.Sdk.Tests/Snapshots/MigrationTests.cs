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
        var steps = report.DowntimeSteps;
        Assert.Equal(report.Downtime, steps.Pause + steps.Quiesce + steps.LastPages + steps.SaveState + steps.SendState);

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

    [Fact]
    public async Task A_page_sent_as_a_zero_marker_arrives_as_zeros()
    {
        var (bytes, frames) = await MigrationOfAnIdleGuestAsync();
        var state = frames.Single(f => f.Kind == 2);

        // A pages frame, spliced in before the state, that marks the program's first page (not zero) as zero.
        var marker = new byte[5 + 8];
        marker[0] = 1;
        BitConverter.TryWriteBytes(marker.AsSpan(1), 1);
        BitConverter.TryWriteBytes(marker.AsSpan(5), Load | 1);
        var stream = new MemoryStream();
        stream.Write(bytes, 0, state.Offset);
        stream.Write(marker);
        stream.Write(bytes, state.Offset, bytes.Length - state.Offset);
        stream.Position = 0;
        await using var restored = await VirtualMachine.ReceiveMigrationAsync(stream, b => b.WithInterpreter(), Ct);
        var page = new byte[4096];
        restored.Memory.Read(new GuestAddress(Load), page);
        Assert.False(page.AsSpan().ContainsAnyExcept((byte)0), "the page marked zero kept data");
    }

    [Fact]
    public async Task A_stream_out_of_order_or_with_a_bad_page_entry_is_refused_naming_the_field()
    {
        var (bytes, frames) = await MigrationOfAnIdleGuestAsync();
        var machine = frames.Single(f => f.Kind == 4);
        var state = frames.Single(f => f.Kind == 2);
        var pages = frames.First(f => f.Kind == 1);

        // The state without the machine's description before it.
        var noMachine = bytes[..machine.Offset].Concat(bytes[state.Offset..]).ToArray();
        var e = await Assert.ThrowsAsync<SnapshotFormatException>(() => VirtualMachine.ReceiveMigrationAsync(new MemoryStream(noMachine), b => b.WithInterpreter(), Ct));
        Assert.Contains("before the machine", e.Message, StringComparison.Ordinal);

        // The machine described twice.
        var twice = bytes[..state.Offset].Concat(bytes[machine.Offset..(machine.Offset + machine.Length)]).Concat(bytes[state.Offset..]).ToArray();
        e = await Assert.ThrowsAsync<SnapshotFormatException>(() => VirtualMachine.ReceiveMigrationAsync(new MemoryStream(twice), b => b.WithInterpreter(), Ct));
        Assert.Contains("second machine frame", e.Message, StringComparison.Ordinal);

        // A page entry with a low bit other than the zero-page flag, and one past the end of RAM.
        foreach (ulong entry in new ulong[] { Load | 2, Load | 0x801, 1UL << 40 })
        {
            var bad = (byte[])bytes.Clone();
            BitConverter.TryWriteBytes(bad.AsSpan(pages.Offset + 5), entry);
            e = await Assert.ThrowsAsync<SnapshotFormatException>(() => VirtualMachine.ReceiveMigrationAsync(new MemoryStream(bad), b => b.WithInterpreter(), Ct));
            Assert.Contains("page address", e.Message, StringComparison.Ordinal);
        }
    }

    /// <summary>The migration stream of a created, never-run guest, and where each of its frames starts (kind, offset, length).</summary>
    private static async Task<(byte[] Bytes, List<(byte Kind, int Offset, int Length)> Frames)> MigrationOfAnIdleGuestAsync()
    {
        await using var vm = FlatGuestVm.Builder("interpreter").WithFlatBinary(Program(), new GuestAddress(Load)).WithEntryPoint(new GuestAddress(Load), StartMode.Long64).Build();
        var full = new MemoryStream();
        var report = await vm.MigrateAsync(full, cancellationToken: Ct);
        Assert.Equal(0, report.ZeroPagesSent);
        var bytes = full.ToArray();
        var frames = new List<(byte Kind, int Offset, int Length)>();
        int at = 20;
        while (at < bytes.Length)
        {
            byte kind = bytes[at];
            int length = kind switch
            {
                1 => 5 + Count(bytes, at),
                2 or 4 => 9 + (int)BitConverter.ToInt64(bytes, at + 1),
                _ => throw new InvalidDataException($"frame kind {kind} at {at}"),
            };
            frames.Add((kind, at, length));
            at += length;
        }

        Assert.Equal(bytes.Length, at);
        return (bytes, frames);

        static int Count(byte[] b, int at)
        {
            int n = BitConverter.ToInt32(b, at + 1);
            int withData = 0;
            for (int i = 0; i < n; i++)
            {
                withData += (BitConverter.ToUInt64(b, at + 5 + (i * 8)) & 1) == 0 ? 1 : 0;
            }

            return (n * 8) + (withData * 4096);
        }
    }

    internal static async Task<(NetworkStream Sending, NetworkStream Receiving)> ConnectedPairAsync()
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
