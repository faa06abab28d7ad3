using System.Text;
using Orleans;
using Orleans.TestingHost;
using Xunit;

namespace Virt.Orleans.Tests;

/// <summary>VM grains on a two-silo in-process cluster: lifecycle, console, and a VM outliving its silo.</summary>
public sealed class VirtualMachineGrainTests
{
    private static readonly TimeSpan Wait = TimeSpan.FromMinutes(2);

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private static async Task<ulong> CounterAsync(IVirtualMachineGrain vm) =>
        BitConverter.ToUInt64(await vm.ReadMemoryAsync(CounterGuest.Counter, 8, Ct));

    /// <summary>Reads the guest's counter until it passes <paramref name="above"/>: the guest runs.</summary>
    private static async Task<ulong> CounterPassesAsync(IVirtualMachineGrain vm, ulong above)
    {
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(Ct);
        deadline.CancelAfter(Wait);
        while (true)
        {
            ulong value = await CounterAsync(vm);
            if (value > above)
            {
                return value;
            }

            await Task.Delay(20, deadline.Token);
        }
    }

    private static async Task<int> ReadyLinesAsync(IVirtualMachineGrain vm)
    {
        var all = await vm.ReadConsoleAsync(0, cancellationToken: Ct);
        Assert.Equal(0, all.Dropped);
        return all.Text.Split(CounterGuest.Ready).Length - 1;
    }

    /// <summary>Creates and starts the counter guest on <paramref name="silo"/> and waits for its ready line and its first counts.</summary>
    private static async Task<IVirtualMachineGrain> StartCounterAsync(VmCluster cluster, string name, SiloHandle silo)
    {
        var vm = cluster.Grains.GetGrain<IVirtualMachineGrain>(name);
        var created = await VmCluster.OnSiloAsync(silo, () => vm.CreateAsync(CounterGuest.Spec(), Ct));
        Assert.Equal(silo.SiloAddress, created.Silo);
        Assert.Equal(VirtualMachineGrainState.Created, created.State);
        var started = await vm.StartAsync(Ct);
        Assert.Equal(VirtualMachineGrainState.Running, started.State);
        await vm.WaitForConsoleAsync(CounterGuest.Ready, 0, Wait, Ct);
        await CounterPassesAsync(vm, 1000);
        return vm;
    }

    [Fact]
    public async Task A_vm_grain_runs_its_guest_pauses_it_and_answers_on_its_console()
    {
        await using var cluster = await VmCluster.StartAsync();
        var vm = await StartCounterAsync(cluster, "console", cluster.Secondary);

        var answer = await vm.ExecAsync("hello", "HELLO", Wait, Ct);
        Assert.Equal("HELLO", answer.Text);

        var paused = await vm.PauseAsync(Ct);
        Assert.Equal(VirtualMachineGrainState.Paused, paused.State);
        ulong atPause = await CounterAsync(vm);
        Assert.Equal(atPause, await CounterAsync(vm));
        await Assert.ThrowsAsync<InvalidOperationException>(() => vm.ExecAsync("x", "X", Wait, Ct));

        await vm.ResumeAsync(Ct);
        await CounterPassesAsync(vm, atPause);
        var metrics = await vm.GetMetricsAsync(Ct);
        Assert.Equal(16UL << 20, metrics.MemoryBytes);
        Assert.Equal(CounterGuest.Ready.Length + "HELLO".Length, metrics.ConsoleBytes);

        var stopped = await vm.StopAsync(Ct);
        Assert.Equal(VirtualMachineGrainState.Stopped, stopped.State);
        Assert.Null(stopped.SnapshotReference);
    }

    [Fact]
    public async Task A_saved_vm_comes_back_on_the_other_silo_after_its_silo_is_killed_with_its_guest_state()
    {
        await using var cluster = await VmCluster.StartAsync();
        var vm = await StartCounterAsync(cluster, "killed", cluster.Secondary);
        await vm.PauseAsync(Ct);
        ulong saved = await CounterAsync(vm);
        var status = await vm.SaveAsync(Ct);
        Assert.NotNull(status.SnapshotReference);
        Assert.Equal(VirtualMachineGrainState.Paused, status.State);

        await cluster.Cluster.KillSiloAsync(cluster.Secondary, Ct);

        var back = await VmCluster.UntilAnsweredAsync(() => vm.GetStatusAsync(Ct), Wait);
        Assert.Equal(cluster.Primary.SiloAddress, back.Silo);
        Assert.True(back.Restored, "the VM was restored from its snapshot");
        Assert.Equal(VirtualMachineGrainState.Paused, back.State);
        Assert.Equal(saved, await CounterAsync(vm)); // memory as saved, not a fresh guest's zero
        await vm.ResumeAsync(Ct);
        await CounterPassesAsync(vm, saved); // it counts on from there
        Assert.Equal(1, await ReadyLinesAsync(vm)); // and never booted again
        Assert.Equal("ABC", (await vm.ExecAsync("abc", "ABC", Wait, Ct)).Text);
        await vm.DeleteAsync(Ct);
    }

    [Fact]
    public async Task A_running_vm_is_saved_when_its_silo_shuts_down_and_runs_on_on_the_other_silo()
    {
        await using var cluster = await VmCluster.StartAsync();
        var vm = await StartCounterAsync(cluster, "drained", cluster.Secondary);
        ulong before = await CounterAsync(vm);

        await cluster.Cluster.StopSiloAsync(cluster.Secondary, Ct);

        var back = await VmCluster.UntilAnsweredAsync(() => vm.GetStatusAsync(Ct), Wait);
        Assert.Equal(cluster.Primary.SiloAddress, back.Silo);
        Assert.True(back.Restored, "the VM was restored from the snapshot its grain saved on deactivation");
        Assert.Equal(VirtualMachineGrainState.Running, back.State);
        ulong after = await CounterAsync(vm);
        Assert.True(after >= before, $"counter {after} after the move, {before} before it");
        await CounterPassesAsync(vm, after);
        Assert.Equal(1, await ReadyLinesAsync(vm));
        var metrics = await vm.GetMetricsAsync(Ct);
        Assert.Equal(1, metrics.Restores);
        Assert.Equal(1, metrics.SnapshotsSaved);
        await vm.DeleteAsync(Ct);
    }

    [Fact]
    public async Task Move_takes_a_running_vm_to_the_silo_asked_for_and_it_counts_on_there()
    {
        await using var cluster = await VmCluster.StartAsync();
        var vm = await StartCounterAsync(cluster, "moved", cluster.Secondary);
        var there = await vm.GetStatusAsync(Ct);
        using (var deadline = CancellationTokenSource.CreateLinkedTokenSource(Ct))
        {
            deadline.CancelAfter(Wait);
            while (!there.Silo.Equals(cluster.Primary.SiloAddress))
            {
                // The move happens once the grain is idle; asked again if the target was not yet a placement candidate.
                var target = await vm.MoveAsync(cluster.Primary.SiloAddress, VirtualMachineMoveMode.SaveAndRestore, Ct);
                Assert.Equal(cluster.Primary.SiloAddress, target);
                for (int poll = 0; poll < 100 && !there.Silo.Equals(target); poll++)
                {
                    await Task.Delay(50, deadline.Token);
                    there = await vm.GetStatusAsync(Ct);
                }
            }
        }

        Assert.True(there.Restored);
        Assert.Equal(VirtualMachineGrainState.Running, there.State);
        ulong counted = await CounterAsync(vm);
        await CounterPassesAsync(vm, counted);
        Assert.Equal(1, await ReadyLinesAsync(vm));
        Assert.Equal("MOVED", (await vm.ExecAsync("moved", "MOVED", Wait, Ct)).Text);

        var ex = await Assert.ThrowsAsync<InvalidOperationException>(() => vm.MoveAsync(cluster.Primary.SiloAddress, VirtualMachineMoveMode.SaveAndRestore, Ct));
        Assert.Contains("already runs on", ex.Message, StringComparison.Ordinal);
        await vm.DeleteAsync(Ct);
    }

    [Fact]
    public async Task A_guest_that_stops_itself_is_reported_stopped_with_its_exit_code_and_starts_again_from_its_spec()
    {
        await using var cluster = await VmCluster.StartAsync();
        var vm = cluster.Grains.GetGrain<IVirtualMachineGrain>("exits");
        await vm.CreateAsync(CounterGuest.Exiting(42), Ct);
        await vm.StartAsync(Ct);
        await vm.WaitForConsoleAsync("bye\n", 0, Wait, Ct);
        var status = await vm.GetStatusAsync(Ct);
        using (var deadline = CancellationTokenSource.CreateLinkedTokenSource(Ct))
        {
            deadline.CancelAfter(Wait);
            while (status.State != VirtualMachineGrainState.Stopped)
            {
                await Task.Delay(20, deadline.Token);
                status = await vm.GetStatusAsync(Ct);
            }
        }

        Assert.Equal(42, status.ExitCode);
        await vm.StartAsync(Ct);
        var second = await vm.WaitForConsoleAsync("bye\n", 4, Wait, Ct);
        Assert.Equal("bye\n", second.Text);
    }

    [Fact]
    public async Task Creating_a_vm_again_with_another_spec_is_refused_and_a_bad_spec_says_what_to_set()
    {
        await using var cluster = await VmCluster.StartAsync();
        var vm = cluster.Grains.GetGrain<IVirtualMachineGrain>("twice");
        await vm.CreateAsync(CounterGuest.Spec(), Ct);
        var again = await vm.CreateAsync(CounterGuest.Spec(), Ct); // an equal spec (a copy of the image) is the same VM
        Assert.Equal(VirtualMachineGrainState.Created, again.State);
        var other = await Assert.ThrowsAsync<InvalidOperationException>(() => vm.CreateAsync(CounterGuest.Spec() with { MemoryMiB = 32 }, Ct));
        Assert.Contains("DeleteAsync", other.Message, StringComparison.Ordinal);

        var bad = await Assert.ThrowsAsync<ArgumentException>(() => cluster.Grains.GetGrain<IVirtualMachineGrain>("bad").CreateAsync(new VirtualMachineSpec(), Ct));
        Assert.Contains("exactly one of FlatImage, KernelPath and SnapshotPath", bad.Message, StringComparison.Ordinal);

        var none = await Assert.ThrowsAsync<InvalidOperationException>(() => cluster.Grains.GetGrain<IVirtualMachineGrain>("none").StartAsync(Ct));
        Assert.Contains("create it first", none.Message, StringComparison.Ordinal);
        await vm.DeleteAsync(Ct);
        Assert.Equal(VirtualMachineGrainState.NotCreated, (await vm.GetStatusAsync(Ct)).State);
    }

    [Fact]
    public async Task A_guest_resumed_on_arrival_runs_on_at_the_target_and_its_grain_keeps_its_console()
    {
        await using var cluster = await VmCluster.StartAsync(resumeOnArrival: true);
        var vm = cluster.Grains.GetGrain<IVirtualMachineGrain>("resumed-on-arrival");
        await VmCluster.OnSiloAsync(cluster.Secondary, () => vm.CreateAsync(CounterGuest.Spec() with { DirtyPageTracking = true }, Ct));
        await vm.StartAsync(Ct);
        await vm.WaitForConsoleAsync(CounterGuest.Ready, 0, Wait, Ct);
        ulong before = await CounterPassesAsync(vm, 1000);

        await vm.MoveAsync(cluster.Primary.SiloAddress, VirtualMachineMoveMode.Live, Ct);
        var moved = await VmCluster.UntilAnsweredAsync(() => vm.GetStatusAsync(Ct), Wait);
        Assert.Equal(cluster.Primary.SiloAddress, moved.Silo);
        Assert.Equal(VirtualMachineGrainState.Running, moved.State);
        var metrics = await vm.GetMetricsAsync(Ct);
        Assert.True(metrics.LastMoveLive, "the VM moved live");
        Assert.NotNull(metrics.LastMoveDowntime);
        await CounterPassesAsync(vm, before);
        Assert.Equal("XYZ", (await vm.ExecAsync("xyz", "XYZ", Wait, Ct)).Text);
        Assert.Equal(1, await ReadyLinesAsync(vm));
        await vm.DeleteAsync(Ct);
    }
}
