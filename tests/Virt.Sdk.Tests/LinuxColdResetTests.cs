using System.Security.Cryptography;
using Virt.Storage;
using Virt.Testing;
using Xunit;

namespace Virt.Sdk.Tests;

/// <summary>
/// A cold reset of a VM built for a Linux kernel loads the kernel, initial RAM disk, zero page and boot tables again
/// and puts the vCPU at the kernel's entry, exactly as <see cref="VirtualMachineBuilder.Build"/> did: the next run is a
/// first boot. The reset of the rest of the machine (a disk device set up from scratch on the same image, a guest that
/// stopped itself) is shown by <see cref="ColdResetTests"/> with a flat virtio-blk guest on both backends, and the boot
/// itself by every Linux test; this one checks what only a Linux machine has, without booting it twice.
/// </summary>
public sealed class LinuxColdResetTests
{
    private const int MemoryMiB = 256;

    [Fact]
    public async Task A_stopped_linux_vm_is_loaded_again_as_it_was_built_by_a_cold_reset()
    {
        Assert.SkipUnless(File.Exists(LinuxKit.Kernel) && File.Exists(LinuxKit.Initrd), "The guest kit is missing; run scripts/get-linux-guest.sh.");
        var ct = TestContext.Current.CancellationToken;
        using var dir = new TempDirectory();
        string disk = Path.Combine(dir.Path, "disk.raw");
        DiskImage.CreateRaw(disk, 1 << 20);
        var console = new TranscriptStream();
        await using var vm = VirtualMachine.CreateBuilder()
            .WithInterpreter()
            .WithMemoryMiB(MemoryMiB)
            .WithLinuxKernel(LinuxKit.Kernel)
            .WithInitrd(LinuxKit.Initrd)
            .WithKernelCommandLine("earlycon=uart8250,io,0x3f8")
            .WithSerialConsole(console)
            .WithVirtioBlock(disk)
            .Build();
        byte[] built = MemoryDigest(vm);
        var registers = vm.GetRegisters(0);
        var special = vm.GetSpecialRegisters(0);
        var devices = vm.VirtioDevices;

        // The kernel runs (it prints its banner: memory is no longer as loaded), then the
        // host stops it and writes over every page as well, so that nothing of the load is left by chance.
        await vm.StartAsync(ct);
        await console.WaitForAsync("Linux version", TimeSpan.FromMinutes(4), ct);
        await vm.StopAsync(ct);
        Assert.NotEqual(registers.Rip, vm.GetRegisters(0).Rip);
        var scribble = new byte[64];
        Array.Fill(scribble, (byte)0xCC);
        for (ulong page = 0; page < (ulong)MemoryMiB << 20; page += 4096)
        {
            vm.Memory.TryWrite(new GuestAddress(page), scribble);
        }

        Assert.NotEqual(built, MemoryDigest(vm));

        await vm.ResetAsync(ct);
        Assert.Equal(VirtualMachineState.Created, vm.State);
        Assert.Equal(built, MemoryDigest(vm));
        Assert.Equal(registers, vm.GetRegisters(0));
        Assert.Equal(special, vm.GetSpecialRegisters(0));
        Assert.Equal(devices, vm.VirtioDevices);
    }

    /// <summary>A digest of all of the VM's RAM (pages outside RAM, such as a hole below 4 GiB, are left out).</summary>
    private static byte[] MemoryDigest(VirtualMachine vm)
    {
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        var chunk = new byte[1 << 20];
        for (ulong at = 0; at < (ulong)MemoryMiB << 20; at += (ulong)chunk.Length)
        {
            if (vm.Memory.TryRead(new GuestAddress(at), chunk))
            {
                hash.AppendData(chunk);
            }
        }

        return hash.GetHashAndReset();
    }
}
