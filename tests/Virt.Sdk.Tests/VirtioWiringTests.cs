using Virt.Boot;
using Virt.Network;
using Virt.Storage;
using Virt.Testing;
using Xunit;
using static Iced.Intel.AssemblerRegisters;

namespace Virt.Sdk.Tests;

public sealed class VirtioWiringTests
{
    private const ulong Load = 0x100000;

    public static TheoryData<string> Backends => new() { "kvm", "interpreter" };

    [Theory]
    [MemberData(nameof(Backends))]
    public async Task Guest_finds_each_virtio_device_at_its_window(string backend)
    {
        if (backend == "kvm")
        {
            HostRequirements.RequireKvm();
        }

        await using var disk = new MemoryBlockBackend(1 << 20);
        var network = new VirtualNetwork("lan");
        network.Start();
        // For each of the three windows: magic (offset 0), version (4) and device id (8) into RAM at 0x200000.
        var code = GuestProgram.Assemble(64, Load, a =>
        {
            a.mov(rsi, VirtualMachineBuilder.VirtioMmioBase);
            a.mov(rdi, 0x200000);
            for (int i = 0; i < 3; i++)
            {
                a.mov(eax, __dword_ptr[rsi + (i * 0x1000)]);
                a.mov(__dword_ptr[rdi + (i * 12)], eax);
                a.mov(eax, __dword_ptr[rsi + (i * 0x1000) + 4]);
                a.mov(__dword_ptr[rdi + (i * 12) + 4], eax);
                a.mov(eax, __dword_ptr[rsi + (i * 0x1000) + 8]);
                a.mov(__dword_ptr[rdi + (i * 12) + 8], eax);
            }

            a.hlt();
        });
        await using var vm = VirtualMachine.CreateBuilder()
            .WithBackend(backend == "kvm" ? BackendKind.Kvm : BackendKind.Interpreter)
            .WithMemoryMiB(16)
            .WithFlatBinary(code, new GuestAddress(Load))
            .WithEntryPoint(new GuestAddress(Load))
            .WithVirtioBlock(disk)
            .WithVirtioNet(network, MacAddress.Parse("52:54:00:12:34:56"))
            .WithVirtioRng()
            .Build();
        Assert.Single(network.Ports);
        var exit = await vm.RunAsync(TestContext.Current.CancellationToken);
        Assert.True(exit.Reason == StopReason.Halted, exit.Description);
        uint[] expectedIds = [2, 1, 4];
        for (int i = 0; i < 3; i++)
        {
            Assert.Equal(0x74726976u, vm.Memory.Read<uint>(new GuestAddress(0x200000 + (ulong)(i * 12))));
            Assert.Equal(2u, vm.Memory.Read<uint>(new GuestAddress(0x200004 + (ulong)(i * 12))));
            Assert.Equal(expectedIds[i], vm.Memory.Read<uint>(new GuestAddress(0x200008 + (ulong)(i * 12))));
        }

        Assert.Equal(
            "virtio_mmio.device=512@0xd0000000:5 virtio_mmio.device=512@0xd0001000:6 virtio_mmio.device=512@0xd0002000:7",
            vm.KernelCommandLineFragments);
        await vm.DisposeAsync();
        Assert.Empty(network.Ports);
    }

    [Fact]
    public void Missing_disk_image_says_how_to_create_one()
    {
        var ex = Assert.Throws<DiskImageException>(() => VirtualMachine.CreateBuilder().WithVirtioBlock("/nonexistent/disk.img"));
        Assert.Equal(DiskImageError.NotFound, ex.Error);
        Assert.Contains("DiskImage.CreateRaw", ex.Message, StringComparison.Ordinal);
        // The same fault found by the storage layer is the same exception.
        Assert.Equal(DiskImageError.NotFound, Assert.Throws<DiskImageException>(() => DiskImage.Open("/nonexistent/disk.img")).Error);
    }

    [Fact]
    public async Task Ram_beyond_the_virtio_windows_moves_above_4_GiB_and_the_device_keeps_its_window()
    {
        await using var vm = VirtualMachine.CreateBuilder().WithInterpreter().WithMemoryMiB(4096).WithVirtioRng().Build();
        Assert.Equal(VirtualMachineBuilder.VirtioMmioBase, vm.Memory.Regions[0].Size);
        Assert.Equal(new GuestAddress(1UL << 32), vm.Memory.Regions[1].Start);
        Assert.False(vm.Memory.Contains(new GuestAddress(VirtualMachineBuilder.VirtioMmioBase), 1));
    }

    [Fact]
    public async Task Disk_image_opened_by_the_vm_is_locked_until_the_vm_is_disposed()
    {
        string path = Path.Combine(Path.GetTempPath(), $"virt-sdk-{Guid.NewGuid():N}.img");
        DiskImage.CreateRaw(path, 1 << 20);
        try
        {
            var builder = VirtualMachine.CreateBuilder().WithInterpreter().WithMemoryMiB(4).WithVirtioBlock(path);
            var first = builder.Build();
            var ex = Assert.ThrowsAny<IOException>(() => builder.Build());
            Assert.Contains(path, ex.Message, StringComparison.Ordinal);
            await first.DisposeAsync();
            await using var second = builder.Build();
        }
        finally
        {
            File.Delete(path);
        }
    }
}
