using Virt.Devices;
using Xunit;

namespace Virt.Sdk.Tests;

/// <summary>
/// A device of the test's own with an ACPI ID in the shared interpreter guest (<see cref="BootedDevicesGuest"/>): the
/// kernel lists its window and ports under that ID, and reading the window at the address the kernel found returns
/// the device's signature.
/// </summary>
[Collection(nameof(BootedDevicesGuest))]
public sealed class LinuxAcpiDeviceTests(BootedDevicesGuest guest)
{
    [Fact]
    public async Task Debian_kernel_finds_a_user_device_through_acpi_and_reads_its_window()
    {
        guest.Require();
        var result = await guest.Vm!.ExecAsync("sh", ["-c", SignatureDevice.Command], cancellationToken: TestContext.Current.CancellationToken);
        Assert.True(result.ExitCode == 0, result.StandardOutput + result.StandardError);
        Assert.Contains("6.1.0", result.StandardOutput, StringComparison.Ordinal);
        SignatureDevice.AssertFound(result.StandardOutput);
    }

    [Fact]
    public async Task Kernel_reaches_pci_configuration_space_through_the_host_bridge_without_an_error()
    {
        // Without the machine's PCI host bridge the kernel's probe fails and every boot logs "PCI: Fatal: No config
        // space access function found" (pci=off too, which only skips the probe).
        guest.Require();
        var result = await guest.Vm!.ExecAsync("sh", ["-c", "dmesg | grep PCI:"], cancellationToken: TestContext.Current.CancellationToken);
        Assert.Contains("PCI: Using configuration type 1 for base access", result.StandardOutput, StringComparison.Ordinal);
        Assert.DoesNotContain("PCI: Fatal", result.StandardOutput, StringComparison.Ordinal);
        Assert.DoesNotContain("PCI: Fatal", guest.Console.Text, StringComparison.Ordinal);
    }
}

/// <summary>A device whose every register reads as the signature "VIRT" (0x56495254), described to the guest by ACPI.</summary>
internal sealed class SignatureDevice : IPortIoDevice, IMmioDevice
{
    /// <summary>The ACPI hardware ID the device is given.</summary>
    public const string HardwareId = "VIRT0001";

    /// <summary>Prints the kernel release, the device's lines in /proc/iomem and /proc/ioports, and the first word of its window.</summary>
    public const string Command = "uname -r; grep " + HardwareId + " /proc/iomem /proc/ioports; "
        + "devmem 0x$(grep " + HardwareId + " /proc/iomem | cut -d- -f1 | tr -d ' ') 32";

    /// <summary>Adds the device (16 ports, a 4 KiB window, an interrupt) to <paramref name="builder"/>.</summary>
    public static VirtualMachineBuilder Add(VirtualMachineBuilder builder) => builder.WithDevice(
        "signature", new DeviceResources { PortCount = 16, MmioSize = 0x1000, Interrupt = true, AcpiHardwareId = HardwareId }, _ => new SignatureDevice());

    /// <summary>Checks what <see cref="Command"/> printed: the kernel found the window and ports, and the window reads the signature.</summary>
    public static void AssertFound(string text)
    {
        Assert.Matches(@"iomem:\s*[0-9a-f]+-[0-9a-f]+ : " + HardwareId + ":00", text);
        Assert.Matches(@"ioports:\s*[0-9a-f]+-[0-9a-f]+ : " + HardwareId + ":00", text);
        Assert.Contains("0x56495254", text, StringComparison.Ordinal);
    }

    private static void Fill(Span<byte> data)
    {
        for (int i = 0; i < data.Length; i++)
        {
            data[i] = (byte)(0x56495254u >> (8 * (i & 3)));
        }
    }

    public void Read(ushort offset, Span<byte> data) => Fill(data);

    public void Write(ushort offset, ReadOnlySpan<byte> data)
    {
    }

    public void Read(ulong offset, Span<byte> data) => Fill(data);

    public void Write(ulong offset, ReadOnlySpan<byte> data)
    {
    }
}
