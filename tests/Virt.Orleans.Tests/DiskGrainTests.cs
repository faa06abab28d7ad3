using Virt.Storage;
using Virt.Testing;
using Xunit;

namespace Virt.Orleans.Tests;

/// <summary>
/// VM grains with a file-backed virtio-blk disk, driven by the flat virtio-blk guest: the disk image holds what the
/// guest wrote up to the last snapshot (or stop), and a VM restored after its silo died finds its disk as its memory
/// remembers it.
/// </summary>
public sealed class DiskGrainTests
{
    private static readonly TimeSpan Wait = TimeSpan.FromMinutes(2);

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private static VirtualMachineSpec Spec(string disk) => new()
    {
        MemoryMiB = 16,
        Backend = VirtualMachineBackend.Interpreter,
        FlatImage = VirtioBlockGuest.Image,
        LoadAddress = VirtioBlockGuest.Load,
        Disks = [disk],
    };

    private static string CreateDisk(VmCluster cluster, string name)
    {
        string path = Path.Combine(cluster.StorageDirectory, name);
        DiskImage.CreateRaw(path, 1 << 20);
        return path;
    }

    private static async Task<byte[]> ImageBlockAsync(string disk)
    {
        var block = new byte[VirtioBlockGuest.BlockBytes];
        await using var file = new FileStream(disk, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
        await file.ReadExactlyAsync(block, Ct);
        return block;
    }

    private static async Task CommandAsync(IVirtualMachineGrain vm, char command, string expect) =>
        Assert.EndsWith(expect, (await vm.ExecAsync(command.ToString(), expect, Wait, Ct)).Text, StringComparison.Ordinal);

    [Fact]
    public async Task A_vm_comes_back_after_a_hard_stop_of_its_silo_with_the_disk_of_its_last_snapshot()
    {
        await using var cluster = await VmCluster.StartAsync();
        string disk = CreateDisk(cluster, "killed.img");
        var vm = cluster.Grains.GetGrain<IVirtualMachineGrain>("disk-killed");
        await VmCluster.OnSiloAsync(cluster.Secondary, () => vm.CreateAsync(Spec(disk), Ct));
        await vm.StartAsync(Ct);
        await vm.WaitForConsoleAsync(VirtioBlockGuest.Ready + "00000000\n", 0, Wait, Ct);
        await CommandAsync(vm, 'w', VirtioBlockGuest.Wrote(1));
        await CommandAsync(vm, 'w', VirtioBlockGuest.Wrote(2));

        var saved = await vm.SaveAsync(Ct);
        Assert.NotNull(saved.SnapshotReference);
        Assert.Equal(VirtualMachineGrainState.Running, saved.State);
        Assert.Equal(VirtioBlockGuest.Pattern(2), await ImageBlockAsync(disk)); // the save brought the image to the snapshot

        // Flushed by the guest after the snapshot: it goes to the layer of writes since the snapshot, not into the image.
        await CommandAsync(vm, 'w', VirtioBlockGuest.Wrote(3));
        Assert.Equal(VirtioBlockGuest.Pattern(2), await ImageBlockAsync(disk));

        await cluster.Cluster.KillSiloAsync(cluster.Secondary, Ct);

        var back = await VmCluster.UntilAnsweredAsync(() => vm.GetStatusAsync(Ct), Wait);
        Assert.Equal(cluster.Primary.SiloAddress, back.Silo);
        Assert.True(back.Restored, "the VM was restored from its snapshot");
        Assert.Equal(VirtualMachineGrainState.Running, back.State);

        // Memory and disk agree: both at the snapshot's generation; the write made after it is gone from both.
        await CommandAsync(vm, 'r', VirtioBlockGuest.Read(2, 2));
        await CommandAsync(vm, 'w', VirtioBlockGuest.Wrote(3));
        await CommandAsync(vm, 'r', VirtioBlockGuest.Read(3, 3));
    }

    [Fact]
    public async Task A_stopped_vm_leaves_its_writes_in_the_image_and_boots_again_over_them()
    {
        await using var cluster = await VmCluster.StartAsync();
        string disk = CreateDisk(cluster, "stopped.img");
        var vm = cluster.Grains.GetGrain<IVirtualMachineGrain>("disk-stopped");
        await vm.CreateAsync(Spec(disk), Ct);
        await vm.StartAsync(Ct);
        await vm.WaitForConsoleAsync(VirtioBlockGuest.Ready + "00000000\n", 0, Wait, Ct);
        await CommandAsync(vm, 'w', VirtioBlockGuest.Wrote(1));
        Assert.Equal(new byte[VirtioBlockGuest.BlockBytes], await ImageBlockAsync(disk)); // not yet: no snapshot, no stop

        await vm.StopAsync(Ct);
        Assert.Equal(VirtioBlockGuest.Pattern(1), await ImageBlockAsync(disk));
        Assert.DoesNotContain(Directory.GetFiles(cluster.StorageDirectory).Select(Path.GetFileName), f => f!.StartsWith("stopped.img.", StringComparison.Ordinal)); // no layer left

        long offset = (await vm.ReadConsoleAsync(0, cancellationToken: Ct)).NextOffset;
        await vm.StartAsync(Ct);
        await vm.WaitForConsoleAsync(VirtioBlockGuest.Ready + "00000001\n", offset, Wait, Ct);
        await CommandAsync(vm, 'w', VirtioBlockGuest.Wrote(2));
        await vm.DeleteAsync(Ct);
        Assert.Equal(VirtioBlockGuest.Pattern(2), await ImageBlockAsync(disk));
    }

    [Fact]
    public async Task A_live_move_hands_the_disk_to_the_target_silo_with_the_writes_since_the_last_snapshot()
    {
        await using var cluster = await VmCluster.StartAsync();
        string disk = CreateDisk(cluster, "moved.img");
        var vm = cluster.Grains.GetGrain<IVirtualMachineGrain>("disk-moved");
        await VmCluster.OnSiloAsync(cluster.Secondary, () => vm.CreateAsync(Spec(disk) with { DirtyPageTracking = true }, Ct));
        await vm.StartAsync(Ct);
        await vm.WaitForConsoleAsync(VirtioBlockGuest.Ready + "00000000\n", 0, Wait, Ct);
        await CommandAsync(vm, 'w', VirtioBlockGuest.Wrote(1));

        var target = await vm.MoveAsync(cluster.Primary.SiloAddress, VirtualMachineMoveMode.Live, Ct);
        Assert.Equal(cluster.Primary.SiloAddress, target);
        var moved = await VmCluster.UntilAnsweredAsync(() => vm.GetStatusAsync(Ct), Wait);
        Assert.Equal(cluster.Primary.SiloAddress, moved.Silo);
        Assert.True((await vm.GetMetricsAsync(Ct)).LastMoveLive, "the VM moved live");

        // The write made before the move (no snapshot since) is on the disk the target attached.
        await CommandAsync(vm, 'r', VirtioBlockGuest.Read(1, 1));
        await CommandAsync(vm, 'w', VirtioBlockGuest.Wrote(2));
        await vm.StopAsync(Ct);
        Assert.Equal(VirtioBlockGuest.Pattern(2), await ImageBlockAsync(disk));
    }
}
