using Virt.Snapshots;
using Virt.Storage;
using Virt.Testing;
using Xunit;

namespace Virt.Sdk.Tests.Snapshots;

/// <summary>How the VM saves and restores its virtio transports: one section per window, the devices' checks on restore.</summary>
public sealed class VirtioSnapshotWiringTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private static VirtualMachineBuilder Builder(IBlockBackend disk) => VirtualMachine.CreateBuilder().WithInterpreter().WithMemoryMiB(16)
        .WithInterruptController()
        .WithVirtioBlock(disk)
        .WithVirtioRng();

    [Fact]
    public async Task Each_transport_is_a_section_named_after_its_window_and_restores_with_the_same_disk()
    {
        using var dir = new TempDirectory();
        string path = Path.Combine(dir.Path, "virtio.snap");
        await using (var disk = new MemoryBlockBackend(1 << 20))
        await using (var vm = Builder(disk).Build())
        {
            await vm.SaveSnapshotAsync(path, Ct);
        }

        using (var reader = SnapshotReader.Open(path))
        {
            var names = reader.Sections.Select(s => s.Name).ToList();
            Assert.Contains("virtio-mmio@0xd0000000", names);
            Assert.Contains("virtio-mmio@0xd0001000", names);
        }

        await using var sameDisk = new MemoryBlockBackend(1 << 20);
        await using var restored = await VirtualMachine.RestoreAsync(path, b => b.WithInterpreter().WithVirtioBlock(sameDisk).WithVirtioRng(), Ct);
        Assert.Equal(VirtualMachineState.Paused, restored.State);

        // Stopping a restored VM that never ran needs no vCPU thread to answer.
        var exit = await restored.StopAsync(Ct).WaitAsync(TimeSpan.FromSeconds(30), Ct);
        Assert.Equal(StopReason.StoppedByHost, exit.Reason);
    }

    [Fact]
    public async Task A_restored_vm_that_never_ran_disposes()
    {
        using var dir = new TempDirectory();
        string path = Path.Combine(dir.Path, "virtio.snap");
        await using (var disk = new MemoryBlockBackend(1 << 20))
        await using (var vm = Builder(disk).Build())
        {
            await vm.SaveSnapshotAsync(path, Ct);
        }

        await using var sameDisk = new MemoryBlockBackend(1 << 20);
        var restored = await VirtualMachine.RestoreAsync(path, b => b.WithInterpreter().WithVirtioBlock(sameDisk).WithVirtioRng(), Ct);
        await restored.DisposeAsync().AsTask().WaitAsync(TimeSpan.FromSeconds(30), Ct);
        Assert.Equal(VirtualMachineState.Disposed, restored.State);
    }

    [Fact]
    public async Task A_restore_with_a_disk_of_another_size_is_refused_naming_the_field()
    {
        using var dir = new TempDirectory();
        string path = Path.Combine(dir.Path, "virtio.snap");
        await using (var disk = new MemoryBlockBackend(1 << 20))
        await using (var vm = Builder(disk).Build())
        {
            await vm.SaveSnapshotAsync(path, Ct);
        }

        await using var bigger = new MemoryBlockBackend(2 << 20);
        var e = await Assert.ThrowsAsync<SnapshotFormatException>(() => VirtualMachine.RestoreAsync(path, b => b.WithInterpreter().WithVirtioBlock(bigger).WithVirtioRng(), Ct));
        Assert.Equal("virtio-mmio@0xd0000000/virtio-blk", e.Section);
        Assert.Equal("capacity", e.Field);
    }
}
