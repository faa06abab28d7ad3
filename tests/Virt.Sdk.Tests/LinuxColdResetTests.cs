using System.Text;
using Virt.Storage;
using Virt.Testing;
using Xunit;

namespace Virt.Sdk.Tests;

/// <summary>A Linux guest that powered off boots again when the same VM runs again (a cold reset), on the interpreter.</summary>
public sealed class LinuxColdResetTests
{
    [Fact]
    public async Task A_powered_off_linux_guest_boots_again_with_its_disk_from_a_cold_reset()
    {
        Assert.SkipUnless(File.Exists(LinuxKit.Kernel) && File.Exists(LinuxKit.Initrd), "The guest kit is missing; run scripts/get-linux-guest.sh.");
        using var dir = new TempDirectory();
        string disk = Path.Combine(dir.Path, "disk.raw");
        DiskImage.CreateRaw(disk, 1 << 20);
        var console = new MemoryStream();
        const string Command = "cat /sys/block/vda/size";
        await using var vm = VirtualMachine.CreateBuilder()
            .WithInterpreter()
            .WithMemoryMiB(256)
            .WithLinuxKernel(LinuxKit.Kernel)
            .WithInitrd(LinuxKit.Initrd)
            .WithKernelCommandLine($"quiet virt.cmd={Convert.ToBase64String(Encoding.ASCII.GetBytes(Command))}")
            .WithSerialConsole(console)
            .WithVirtioBlock(disk)
            .Build();

        for (int boot = 1; boot <= 2; boot++)
        {
            using var timeout = new CancellationTokenSource(TimeSpan.FromMinutes(4));
            var exit = await vm.RunAsync(timeout.Token);
            string text = Text(console);
            Assert.True(exit.Reason == StopReason.PowerOff, $"boot {boot}: {exit.Description}\n{text}");
            // Each boot reached /init, found the disk (2048 sectors) and ran the command to its end.
            Assert.Equal(boot, Count(text, "VIRT-INIT-READY"));
            Assert.Equal(boot, Count(text, "\n2048"));
            Assert.Equal(boot, Count(text, "VIRT-EXIT-STATUS=0"));
        }
    }

    private static int Count(string text, string what)
    {
        int n = 0;
        for (int i = text.IndexOf(what, StringComparison.Ordinal); i >= 0; i = text.IndexOf(what, i + what.Length, StringComparison.Ordinal))
        {
            n++;
        }

        return n;
    }

    private static string Text(MemoryStream output)
    {
        lock (output)
        {
            return Encoding.UTF8.GetString(output.ToArray()).Replace("\r\n", "\n", StringComparison.Ordinal);
        }
    }
}
