using System.Text;
using Virt.Testing;
using Xunit;

namespace Virt.Sdk.Tests;

/// <summary>A Linux guest on the interpreter gives memory back to the host through its virtio balloon.</summary>
public sealed class LinuxBalloonTests
{
    [Fact]
    public async Task Inflating_the_balloon_lowers_the_vms_resident_memory_on_the_host()
    {
        Assert.SkipUnless(File.Exists(LinuxKit.Kernel) && File.Exists(LinuxKit.Initrd), "The guest kit is missing; run scripts/get-linux-guest.sh.");
        Assert.SkipUnless(OperatingSystem.IsLinux(), "Resident memory is measured with mincore (Linux).");
        const ulong mib = 1UL << 20;
        var console = new MarkerStream("VIRT-INIT-READY");
        using var pool = new ResourcePool(new ResourcePoolOptions { Cpus = 1, MemoryBytes = 512 * mib });
        await using var vm = LinuxKit.Interactive(console)
            .WithName("ballooned")
            .WithMemoryMiB(256)
            .WithBalloon()
            .WithResourcePool(pool)
            .Build();
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
        timeout.CancelAfter(TimeSpan.FromMinutes(6));
        await vm.StartAsync(timeout.Token);
        await console.Seen.Task.WaitAsync(timeout.Token);

        // 256 MiB of RAM: the kernel and the RAM-backed root take about 50 MiB, the balloon will take 128.
        // The guest touches 96 MiB (a file in its RAM-backed root), so the host holds those pages.
        await vm.WriteToSerialConsoleAsync(Encoding.ASCII.GetBytes("dd if=/dev/zero of=/fill bs=1M count=96 2>/dev/null; echo FILLED-$((40+2))\n"), timeout.Token);
        await console.WaitForAsync("FILLED-42", timeout.Token);
        ulong peak = vm.ResidentMemoryBytes ?? throw new InvalidOperationException("no resident size");
        Assert.True(peak > 96 * mib, $"resident {peak / mib} MiB after the guest wrote 96 MiB");

        // Freed in the guest, the pages stay with the host until the balloon takes them.
        await vm.WriteToSerialConsoleAsync(Encoding.ASCII.GetBytes("rm /fill; echo FREED-$((40+2))\n"), timeout.Token);
        await console.WaitForAsync("FREED-42", timeout.Token);
        var balloon = vm.Balloon ?? throw new InvalidOperationException("no balloon");
        using (var inflate = CancellationTokenSource.CreateLinkedTokenSource(timeout.Token))
        {
            inflate.CancelAfter(TimeSpan.FromSeconds(60));
            try
            {
                await balloon.InflateToAsync(128 * mib, inflate.Token);
            }
            catch (OperationCanceledException) when (!timeout.IsCancellationRequested)
            {
                string where = $"inflated {balloon.Device.InflatedPages} pages, actual {balloon.Device.ActualPages}, target {balloon.Device.TargetPages}, state {vm.State}, usage {pool.GetUsage("ballooned")}";
                await vm.WriteToSerialConsoleAsync(Encoding.ASCII.GetBytes("ls /sys/bus/virtio/drivers/; cat /sys/bus/virtio/devices/*/features; dmesg | grep -i -e balloon -e virtio | tail; echo DIAG-$((40+2))\n"), timeout.Token);
                using var diag = CancellationTokenSource.CreateLinkedTokenSource(timeout.Token);
                diag.CancelAfter(TimeSpan.FromSeconds(60));
                try
                {
                    await console.WaitForAsync("DIAG-42", diag.Token);
                }
                catch (OperationCanceledException)
                {
                    await vm.PauseAsync(timeout.Token);
                    Assert.Fail($"the guest does not answer; {where}; rip 0x{vm.GetRegisters(0).Rip:x}\n{console.Text}");
                }

                Assert.Fail($"the balloon reached {balloon.ActualBytes / mib} of 128 MiB (released {balloon.Device.InflatedPages} pages)\n{console.Text}");
            }
        }

        ulong after = vm.ResidentMemoryBytes ?? 0;

        Assert.Equal(128 * mib, balloon.ActualBytes);
        Assert.True(balloon.Device.ReleasedPages * 4096 >= (long)(120 * mib), $"released {balloon.Device.ReleasedPages} pages");
        Assert.True(after + (64 * mib) <= peak, $"resident {peak / mib} MiB before the inflate, {after / mib} MiB after");
        Assert.Equal(128 * mib, pool.GetUsage("ballooned")!.MemoryChargedBytes);

        // Deflating lets the guest use the memory again.
        await balloon.InflateToAsync(0, timeout.Token);
        Assert.Equal(0UL, balloon.ActualBytes);
        await vm.WriteToSerialConsoleAsync(Encoding.ASCII.GetBytes("exit\n"), timeout.Token);
        var exit = await vm.WaitForExitAsync(timeout.Token);
        Assert.True(exit.Reason == StopReason.PowerOff, exit.Description + "\n" + console.Text);
    }
}
