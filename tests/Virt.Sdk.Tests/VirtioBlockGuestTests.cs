using Virt.Boot;
using Virt.Storage;
using Virt.Testing;
using Xunit;

namespace Virt.Sdk.Tests;

/// <summary>
/// The flat virtio-blk guest of Virt.Testing against the real device behind its virtio-mmio transport: it finds the
/// disk, writes, flushes and reads back through one split virtqueue, and what it wrote is in the image file.
/// </summary>
public sealed class VirtioBlockGuestTests : IDisposable
{
    private static readonly TimeSpan Wait = TimeSpan.FromMinutes(1);
    private readonly string _directory = Directory.CreateTempSubdirectory("virt-blkguest-").FullName;

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    public void Dispose() => Directory.Delete(_directory, recursive: true);

    public static TheoryData<string> Backends => FlatGuestVm.Backends;

    private static VirtualMachineBuilder Builder(string backend, string disk, TranscriptStream console) => FlatGuestVm.Builder(backend)
        .WithFlatBinary(VirtioBlockGuest.Image, new GuestAddress(VirtioBlockGuest.Load))
        .WithEntryPoint(new GuestAddress(VirtioBlockGuest.Load), StartMode.Long64)
        .WithSerialConsole(console)
        .WithVirtioBlock(disk);

    private static Task Command(VirtualMachine vm, char command) => vm.WriteToSerialConsoleAsync(new[] { (byte)command }, Ct);

    [Theory]
    [MemberData(nameof(Backends))]
    public Task The_guest_writes_flushes_and_reads_back_and_the_image_holds_what_it_flushed(string backend) =>
        WriteFlushReadAsync(backend, Path.Combine(_directory, "disk.img"));

    [Theory]
    [MemberData(nameof(Backends))]
    public async Task An_image_in_host_memory_is_served_on_the_vcpu_thread_with_the_same_results(string backend)
    {
        // tmpfs: small reads and writes are served inline, in the vCPU's MMIO exit (VirtioBlockInline.Automatic).
        string disk = Path.Combine("/dev/shm", $"virt-blkguest-{Guid.NewGuid():N}.img");
        try
        {
            await WriteFlushReadAsync(backend, disk);
        }
        finally
        {
            File.Delete(disk);
        }
    }

    private static async Task WriteFlushReadAsync(string backend, string disk)
    {
        DiskImage.CreateRaw(disk, 1 << 20);
        var console = new TranscriptStream();
        await using (var vm = Builder(backend, disk, console).Build())
        {
            Assert.Equal(VirtioBlockGuest.DefaultWindow, vm.VirtioDevices.Single().Address.Value);
            await vm.StartAsync(Ct);
            await console.WaitForAsync(VirtioBlockGuest.Ready + "00000000\n", Wait, Ct);
            await Command(vm, 'r');
            await console.WaitForAsync(VirtioBlockGuest.Read(0, 0, "blank"), Wait, Ct);
            await Command(vm, 'w');
            await console.WaitForAsync(VirtioBlockGuest.Wrote(1), Wait, Ct);
            await Command(vm, 'r');
            await console.WaitForAsync(VirtioBlockGuest.Read(1, 1), Wait, Ct);
            await Command(vm, 'w');
            await console.WaitForAsync(VirtioBlockGuest.Wrote(2), Wait, Ct);
            Assert.DoesNotContain("error", console.Text, StringComparison.Ordinal);
        }

        var image = await File.ReadAllBytesAsync(disk, Ct);
        Assert.Equal(VirtioBlockGuest.Pattern(2), image[..VirtioBlockGuest.BlockBytes]);

        // A new machine on the same image boots into the generation it finds there.
        var again = new TranscriptStream();
        await using var second = Builder(backend, disk, again).Build();
        await second.StartAsync(Ct);
        await again.WaitForAsync(VirtioBlockGuest.Ready + "00000002\n", Wait, Ct);
    }

    [Fact]
    public async Task A_damaged_block_reads_as_bad_and_a_missing_disk_stops_the_driver_with_a_reason()
    {
        string disk = Path.Combine(_directory, "damaged.img");
        var block = VirtioBlockGuest.Pattern(5);
        block[1000] ^= 0xFF;
        DiskImage.CreateRaw(disk, 1 << 20);
        await using (var stream = new FileStream(disk, FileMode.Open))
        {
            await stream.WriteAsync(block, Ct);
        }

        var console = new TranscriptStream();
        await using (var vm = Builder("interpreter", disk, console).Build())
        {
            await vm.StartAsync(Ct);
            await console.WaitForAsync(VirtioBlockGuest.Ready + "00000005\n", Wait, Ct);
            await Command(vm, 'r');
            await console.WaitForAsync(VirtioBlockGuest.Read(5, 5, "bad"), Wait, Ct);
        }

        var noDisk = new TranscriptStream();
        await using var bare = FlatGuestVm.Builder("interpreter")
            .WithFlatBinary(VirtioBlockGuest.Image, new GuestAddress(VirtioBlockGuest.Load))
            .WithEntryPoint(new GuestAddress(VirtioBlockGuest.Load), StartMode.Long64)
            .WithSerialConsole(noDisk)
            .WithVirtioRng()
            .Build();
        await bare.StartAsync(Ct);
        await noDisk.WaitForAsync("virtio error d\n", Wait, Ct);
    }

    /// <summary>
    /// A VM snapshot holds memory and device state, not disk contents: a write made after the save stays in the image,
    /// so the restored guest finds a newer generation on the disk than the one it remembers.
    /// </summary>
    [Fact]
    public async Task A_snapshot_does_not_hold_the_disk_so_writes_after_it_stay_in_the_image()
    {
        string disk = Path.Combine(_directory, "snap.img");
        string snapshot = Path.Combine(_directory, "vm.snap");
        DiskImage.CreateRaw(disk, 1 << 20);
        var console = new TranscriptStream();
        await using (var vm = Builder("interpreter", disk, console).Build())
        {
            await vm.StartAsync(Ct);
            await console.WaitForAsync(VirtioBlockGuest.Ready, Wait, Ct);
            await Command(vm, 'w');
            await console.WaitForAsync(VirtioBlockGuest.Wrote(1), Wait, Ct);
            await vm.PauseAsync(Ct);
            await vm.SaveSnapshotAsync(snapshot, Ct);
            await vm.ResumeAsync(Ct);
            await Command(vm, 'w');
            await console.WaitForAsync(VirtioBlockGuest.Wrote(2), Wait, Ct);
        }

        var restoredConsole = new TranscriptStream();
        await using var restored = await VirtualMachine.RestoreAsync(snapshot, b => b.WithSerialConsole(restoredConsole).WithVirtioBlock(disk), Ct);
        await restored.ResumeAsync(Ct);
        await Command(restored, 'r');
        await restoredConsole.WaitForAsync(VirtioBlockGuest.Read(2, 1), Wait, Ct);
        await Command(restored, 'w');
        await restoredConsole.WaitForAsync(VirtioBlockGuest.Wrote(2), Wait, Ct);
    }
}
