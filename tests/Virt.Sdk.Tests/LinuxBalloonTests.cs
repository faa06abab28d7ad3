using Virt.Testing;
using Xunit;

namespace Virt.Sdk.Tests;

/// <summary>
/// A Linux guest on the interpreter gives memory back to the host through its virtio balloon: the shared guest of
/// <see cref="BootedDevicesGuest"/> (booted, not restored: its RAM is anonymous memory, so what the balloon releases
/// leaves the host's resident set), driven through its agent.
/// </summary>
[Collection(nameof(BootedDevicesGuest))]
public sealed class LinuxBalloonTests(BootedDevicesGuest guest)
{
    [Fact]
    public async Task Inflating_the_balloon_lowers_the_vms_resident_memory_on_the_host()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "Resident memory is measured with mincore (Linux).");
        guest.Require();
        var vm = guest.Vm!;
        var pool = guest.Pool;
        const ulong mib = 1UL << 20;
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
        timeout.CancelAfter(TimeSpan.FromMinutes(6));
        Assert.Equal(256 * mib, pool.GetUsage(BootedDevicesGuest.Name)!.MemoryChargedBytes);

        // 256 MiB of RAM: the kernel, the RAM-backed root and what the other tests of this guest left take well under
        // 100 MiB, the balloon will take 128. The guest touches 96 MiB (a file in its RAM-backed root), so the host holds
        // those pages.
        var fill = await vm.ExecAsync("sh", ["-c", "dd if=/dev/zero of=/fill bs=1M count=96 2>&1"], cancellationToken: timeout.Token);
        Assert.True(fill.Succeeded, fill.StandardOutput + fill.StandardError);
        ulong peak = vm.ResidentMemoryBytes ?? throw new InvalidOperationException("no resident size");
        Assert.True(peak > 96 * mib, $"resident {peak / mib} MiB after the guest wrote 96 MiB");

        // Freed in the guest, the pages stay with the host until the balloon takes them.
        var rm = await vm.ExecAsync("rm", ["/fill"], cancellationToken: timeout.Token);
        Assert.True(rm.Succeeded, rm.StandardError);
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
                string where = $"inflated {balloon.Device.InflatedPages} pages, actual {balloon.Device.ActualPages}, target {balloon.Device.TargetPages}, state {vm.State}, usage {pool.GetUsage(BootedDevicesGuest.Name)}";
                using var diag = CancellationTokenSource.CreateLinkedTokenSource(timeout.Token);
                diag.CancelAfter(TimeSpan.FromSeconds(60));
                try
                {
                    var d = await vm.ExecAsync("sh", ["-c", "ls /sys/bus/virtio/drivers/; cat /sys/bus/virtio/devices/*/features; dmesg | grep -i -e balloon -e virtio | tail"], cancellationToken: diag.Token);
                    Assert.Fail($"the balloon reached {balloon.ActualBytes / mib} of 128 MiB (released {balloon.Device.InflatedPages} pages); {where}\n{d.StandardOutput}{d.StandardError}");
                }
                catch (OperationCanceledException) when (!timeout.IsCancellationRequested)
                {
                    await vm.PauseAsync(timeout.Token);
                    Assert.Fail($"the guest does not answer; {where}; rip 0x{vm.GetRegisters(0).Rip:x}\n{guest.Console.Text}");
                }
            }
        }

        ulong after = vm.ResidentMemoryBytes ?? 0;

        Assert.Equal(128 * mib, balloon.ActualBytes);
        Assert.True(balloon.Device.ReleasedPages * 4096 >= (long)(120 * mib), $"released {balloon.Device.ReleasedPages} pages");
        Assert.True(after + (64 * mib) <= peak, $"resident {peak / mib} MiB before the inflate, {after / mib} MiB after");
        Assert.Equal(128 * mib, pool.GetUsage(BootedDevicesGuest.Name)!.MemoryChargedBytes);

        // Deflating lets the guest use the memory again: it writes the 96 MiB once more (more than it had free while
        // the balloon held 128 MiB), and the pool charges the whole VM again.
        await balloon.InflateToAsync(0, timeout.Token);
        Assert.Equal(0UL, balloon.ActualBytes);
        var again = await vm.ExecAsync("sh", ["-c", "dd if=/dev/zero of=/fill bs=1M count=96 2>&1 && rm /fill"], cancellationToken: timeout.Token);
        Assert.True(again.Succeeded, again.StandardOutput + again.StandardError);
        Assert.Equal(256 * mib, pool.GetUsage(BootedDevicesGuest.Name)!.MemoryChargedBytes);
    }
}
