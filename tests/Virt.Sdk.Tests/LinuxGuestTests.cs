using System.Text;
using Virt.Boot;
using Virt.Testing;
using Xunit;

namespace Virt.Sdk.Tests;

public sealed class LinuxGuestTests
{
    private static readonly string Kernel = Path.Combine(RepositoryPaths.LinuxGuestKit, "vmlinuz");
    private static readonly string Initrd = Path.Combine(RepositoryPaths.LinuxGuestKit, "initramfs.cpio.gz");

    [Fact]
    public void Corrupt_kernel_is_refused_naming_the_field()
    {
        var garbage = new byte[64 * 1024];
        garbage[0x1FE] = 0x55;
        var ex = Assert.Throws<BootImageException>(() => VirtualMachine.CreateBuilder()
            .WithInterpreter().WithMemoryMiB(256).WithLinuxKernel(garbage).Build());
        Assert.False(string.IsNullOrEmpty(ex.Field));
        Assert.Contains(ex.Field, ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Linux_guest_with_too_little_memory_is_refused_with_a_size_to_use()
    {
        var ex = Assert.Throws<ArgumentException>(() => VirtualMachine.CreateBuilder()
            .WithInterpreter().WithMemoryMiB(64).WithLinuxKernel(new byte[4096]).Build());
        Assert.Contains("WithMemoryMiB(256)", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Missing_kernel_file_points_at_the_guest_kit()
    {
        var ex = Assert.Throws<FileNotFoundException>(() => VirtualMachine.CreateBuilder().WithLinuxKernel("/nonexistent/vmlinuz"));
        Assert.Contains("get-linux-guest.sh", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Initrd_without_kernel_is_refused()
    {
        var ex = Assert.Throws<ArgumentException>(() => VirtualMachine.CreateBuilder().WithInterpreter().WithInitrd(new byte[16]).Build());
        Assert.Contains("WithLinuxKernel", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Debian_kernel_is_placed_with_console_command_line_and_acpi()
    {
        Assert.SkipUnless(File.Exists(Kernel) && File.Exists(Initrd), "The guest kit is missing; run scripts/get-linux-guest.sh.");
        await using var vm = VirtualMachine.CreateBuilder()
            .WithInterpreter()
            .WithMemoryMiB(256)
            .WithLinuxKernel(Kernel)
            .WithInitrd(Initrd)
            .WithKernelCommandLine("quiet")
            .WithSerialConsole(Stream.Null)
            .WithVirtioRng()
            .Build();
        Assert.Equal("quiet console=ttyS0", vm.KernelCommandLine);
        var regs = vm.GetRegisters(0);
        // 64-bit boot protocol: RSI points at the zero page, whose header has the "HdrS" magic at 0x202.
        Assert.Equal(0x53726448u, vm.Memory.Read<uint>(new GuestAddress(regs.Rsi + 0x202)));
        ulong cmdPtr = vm.Memory.Read<uint>(new GuestAddress(regs.Rsi + 0x228));
        var cmd = new byte[vm.KernelCommandLine!.Length];
        vm.Memory.Read(new GuestAddress(cmdPtr), cmd);
        Assert.Equal(vm.KernelCommandLine, Encoding.ASCII.GetString(cmd));
        Assert.Equal(0x200UL, regs.Rip & 0xFFF);
    }

    [Fact]
    public async Task Debian_kernel_boots_to_init_and_powers_off_on_hardware_kvm()
    {
        HostRequirements.RequireKvm();
        Assert.SkipUnless(File.Exists(Kernel) && File.Exists(Initrd), "The guest kit is missing; run scripts/get-linux-guest.sh.");
        Assert.SkipUnless(HasHardwareVirtualization(), "This host's KVM has no hardware virtualization (no vmx/svm flag); a stock kernel does not run on it (see docs/linux-guests.md).");
        var output = new MemoryStream();
        string command = Convert.ToBase64String(Encoding.ASCII.GetBytes("uname -r"));
        await using var vm = VirtualMachine.CreateBuilder()
            .WithKvm()
            .WithMemoryMiB(256)
            .WithLinuxKernel(Kernel)
            .WithInitrd(Initrd)
            .WithKernelCommandLine($"quiet virt.cmd={command}")
            .WithSerialConsole(output)
            .Build();
        using var timeout = new CancellationTokenSource(TimeSpan.FromMinutes(2));
        var exit = await vm.RunAsync(timeout.Token);
        string text = Encoding.UTF8.GetString(output.ToArray());
        Assert.Contains("VIRT-INIT-READY", text, StringComparison.Ordinal);
        Assert.True(exit.Reason == StopReason.PowerOff, exit.Description + "\n" + text);
    }

    [Fact]
    public async Task Debian_kernel_boots_to_init_on_the_interpreter_runs_a_command_and_powers_off()
    {
        Assert.SkipUnless(File.Exists(Kernel) && File.Exists(Initrd), "The guest kit is missing; run scripts/get-linux-guest.sh.");
        var (exit, text) = await BootInterpreter("uname -r");
        Assert.Contains("VIRT-INIT-READY", text, StringComparison.Ordinal);
        Assert.Contains("6.1.0", text, StringComparison.Ordinal);
        Assert.Contains("VIRT-EXIT-STATUS=0", text, StringComparison.Ordinal);
        Assert.True(exit.Reason == StopReason.PowerOff, exit.Description + "\n" + text);
    }

    [Fact]
    public async Task Reboot_in_the_guest_ends_the_vm_with_a_reset_reason()
    {
        Assert.SkipUnless(File.Exists(Kernel) && File.Exists(Initrd), "The guest kit is missing; run scripts/get-linux-guest.sh.");
        var (exit, text) = await BootInterpreter("reboot -f");
        Assert.Contains("VIRT-INIT-READY", text, StringComparison.Ordinal);
        Assert.True(exit.Reason == StopReason.Reset, exit.Description + "\n" + text);
    }

    private static async Task<(VirtualMachineExit Exit, string Output)> BootInterpreter(string command)
    {
        var output = new MemoryStream();
        string encoded = Convert.ToBase64String(Encoding.ASCII.GetBytes(command));
        await using var vm = VirtualMachine.CreateBuilder()
            .WithInterpreter()
            .WithMemoryMiB(256)
            .WithLinuxKernel(Kernel)
            .WithInitrd(Initrd)
            .WithKernelCommandLine($"quiet virt.cmd={encoded}")
            .WithSerialConsole(output)
            .Build();
        using var timeout = new CancellationTokenSource(TimeSpan.FromMinutes(4));
        var exit = await vm.RunAsync(timeout.Token);
        string text;
        lock (output)
        {
            text = Encoding.UTF8.GetString(output.ToArray());
        }

        return (exit, text);
    }

    private static bool HasHardwareVirtualization() =>
        File.Exists("/proc/cpuinfo") && File.ReadLines("/proc/cpuinfo").Any(l => l.StartsWith("flags", StringComparison.Ordinal) && (l.Contains(" vmx", StringComparison.Ordinal) || l.Contains(" svm", StringComparison.Ordinal)));
}
