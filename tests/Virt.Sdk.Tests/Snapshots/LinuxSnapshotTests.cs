using System.Diagnostics;
using System.Text;
using Virt.Network;
using Virt.Testing;
using Xunit;

namespace Virt.Sdk.Tests.Snapshots;

/// <summary>A Linux appliance restored from a snapshot goes on: its shell answers, its disk reads and writes, its network pings.</summary>
public sealed class LinuxSnapshotTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private static async Task<(VirtualMachine Vm, MarkerStream Console, string Disk, TimeSpan RestoreTime, TimeSpan BootTime)> RestoreAsync(string marker, VirtualNetwork network, TempDirectory dir)
    {
        // The appliance that the Linux tests share, booted once per test run (BootedAppliance).
        var booted = await BootedAppliance.GetAsync();
        string disk = Path.Combine(dir.Path, "disk.ext4");
        File.Copy(booted.DiskAtSnapshot, disk);
        var console = new MarkerStream(marker);
        var clock = Stopwatch.StartNew();
        var vm = await VirtualMachine.RestoreAsync(booted.SnapshotPath, b => b.WithInterpreter().WithSerialConsole(console).WithVirtioBlock(disk).WithVirtioNet(network, BootedAppliance.Mac), Ct);
        return (vm, console, disk, clock.Elapsed, booted.BootTime);
    }

    [Fact]
    public async Task The_shell_of_a_restored_appliance_answers()
    {
        using var dir = new TempDirectory();
        var network = new VirtualNetwork("snapshot-shell");
        network.Start();
        var (vm, console, _, restoreTime, bootTime) = await RestoreAsync("ANSWER-", network, dir);
        await using var _ = vm;
        using var timeout = new CancellationTokenSource(TimeSpan.FromMinutes(2));
        await vm.ResumeAsync(timeout.Token);
        await vm.WriteToSerialConsoleAsync("echo ANSWER-$((6*7))-$(cat /proc/uptime | cut -d' ' -f1)\n"u8.ToArray(), timeout.Token);
        await console.WaitForAsync("ANSWER-42-", timeout.Token);
        TestContext.Current.SendDiagnosticMessage($"boot to a ready shell {bootTime.TotalSeconds:F1} s; restore {restoreTime.TotalMilliseconds:F1} ms");
    }

    [Fact]
    public async Task The_disk_of_a_restored_appliance_keeps_what_was_written_before_and_takes_new_writes()
    {
        using var dir = new TempDirectory();
        var network = new VirtualNetwork("snapshot-disk");
        network.Start();
        var (vm, console, disk, _, _) = await RestoreAsync("DISK-DONE-", network, dir);
        await using (vm)
        {
            using var timeout = new CancellationTokenSource(TimeSpan.FromMinutes(3));
            await vm.ResumeAsync(timeout.Token);
            await vm.WriteToSerialConsoleAsync(Encoding.ASCII.GetBytes(
                "cat /mnt/before.txt /mnt/hello.txt && echo written-after-the-restore > /mnt/after.txt && sync && umount /mnt && echo DISK-DONE-$((6*7))\n"), timeout.Token);
            await console.WaitForAsync("DISK-DONE-42", timeout.Token);
            Assert.Contains(BootedAppliance.WrittenBeforeSnapshot, console.Text, StringComparison.Ordinal);
            Assert.Contains("hello from the host", console.Text, StringComparison.Ordinal);
            await vm.StopAsync(timeout.Token);
        }

        Assert.Equal("written-after-the-restore\n", HostTools.Run("debugfs", $"-R \"cat /after.txt\" {disk}"));
        HostTools.Run("e2fsck", $"-f -n {disk}");
    }

    [Fact]
    public async Task The_network_of_a_restored_appliance_reaches_a_peer_on_the_network_given_at_restore()
    {
        using var dir = new TempDirectory();
        var network = new VirtualNetwork("snapshot-net");
        network.Start();
        await using var peer = new PingResponder(network, System.Net.IPAddress.Parse("10.0.14.2"), MacAddress.Parse("02:00:00:00:0e:02"));
        var (vm, console, _, _, _) = await RestoreAsync("PING-DONE-", network, dir);
        await using var _ = vm;
        using var timeout = new CancellationTokenSource(TimeSpan.FromMinutes(3));
        await vm.ResumeAsync(timeout.Token);
        await vm.WriteToSerialConsoleAsync("ping -c 3 -w 60 10.0.14.2; echo PING-DONE-$((6*7))\n"u8.ToArray(), timeout.Token);
        await console.WaitForAsync("PING-DONE-42", timeout.Token);
        Assert.True(console.Text.Contains("3 packets transmitted, 3 packets received", StringComparison.Ordinal), console.Text);
        Assert.Equal(3, peer.EchoReplies);
    }

    [Fact]
    public async Task Two_clones_of_one_snapshot_run_side_by_side_and_do_not_see_each_others_writes()
    {
        using var dirA = new TempDirectory();
        using var dirB = new TempDirectory();
        var networkA = new VirtualNetwork("clone-a");
        var networkB = new VirtualNetwork("clone-b");
        networkA.Start();
        networkB.Start();
        var (a, consoleA, _, _, _) = await RestoreAsync("CLONE-A-", networkA, dirA);
        await using var _ = a;
        var (b, consoleB, _, _, _) = await RestoreAsync("CLONE-B-", networkB, dirB);
        await using var __ = b;
        using var timeout = new CancellationTokenSource(TimeSpan.FromMinutes(3));
        await a.ResumeAsync(timeout.Token);
        await b.ResumeAsync(timeout.Token);
        await a.WriteToSerialConsoleAsync("echo only-in-a > /tmp/mark; cat /tmp/mark; echo CLONE-A-$((1+1))\n"u8.ToArray(), timeout.Token);
        await b.WriteToSerialConsoleAsync("cat /tmp/mark 2>&1; echo CLONE-B-$((2+2))\n"u8.ToArray(), timeout.Token);
        await consoleA.WaitForAsync("CLONE-A-2", timeout.Token);
        await consoleB.WaitForAsync("CLONE-B-4", timeout.Token);
        Assert.Contains("only-in-a", consoleA.Text, StringComparison.Ordinal);
        Assert.DoesNotContain("only-in-a", consoleB.Text, StringComparison.Ordinal);
    }
}
