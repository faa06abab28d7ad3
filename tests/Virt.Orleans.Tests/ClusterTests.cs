using System.Collections.Concurrent;
using System.Text;
using Orleans;
using Orleans.Runtime;
using Orleans.TestingHost;
using Xunit;

namespace Virt.Orleans.Tests;

/// <summary>Capacity placement, drains with live migration, and the sandbox service on a two-silo cluster.</summary>
public sealed class ClusterTests
{
    private static readonly TimeSpan Wait = TimeSpan.FromMinutes(2);

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private static async Task<ulong> CounterAsync(IVirtualMachineGrain vm) =>
        BitConverter.ToUInt64(await vm.ReadMemoryAsync(CounterGuest.Counter, 8, Ct));

    private static async Task UntilAsync(Func<Task<bool>> condition, string what)
    {
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(Ct);
        deadline.CancelAfter(Wait);
        try
        {
            while (!await condition())
            {
                await Task.Delay(20, deadline.Token);
            }
        }
        catch (OperationCanceledException) when (!Ct.IsCancellationRequested)
        {
            Assert.Fail($"Waited {Wait} for {what}.");
        }
    }

    /// <summary>Waits until every silo's placement sees <paramref name="vms"/> VMs in the cluster (its view is current).</summary>
    private static Task ViewsSeeAsync(VmCluster cluster, int vms) => UntilAsync(
        async () =>
        {
            foreach (var silo in new[] { cluster.Primary, cluster.Secondary })
            {
                var view = await cluster.Grains.GetVirtualMachineHost(silo.SiloAddress).GetClusterViewAsync(Ct);
                if (view.Length != 2 || view.Sum(s => s.VirtualMachines) != vms)
                {
                    return false;
                }
            }

            return true;
        },
        $"both silos' placement to see {vms} VMs");

    private static bool HasCapacityRefusal(Exception? ex)
    {
        for (; ex is not null; ex = ex.InnerException)
        {
            if (ex is ClusterCapacityException || ex.Message.Contains("No silo has room", StringComparison.Ordinal))
            {
                return true;
            }
        }

        return false;
    }

    [Fact]
    public async Task Placement_spreads_vms_by_free_memory_and_refuses_a_vm_no_silo_has_room_for()
    {
        await using var cluster = await VmCluster.StartAsync(memoryBudgetMiB: 64);
        await ViewsSeeAsync(cluster, 0);
        for (int i = 0; i < 4; i++)
        {
            await cluster.Grains.GetGrain<IVirtualMachineGrain>($"placed-{i}").CreateAsync(CounterGuest.Spec(), Ct);
            await ViewsSeeAsync(cluster, i + 1);
        }

        var silos = await cluster.Grains.GetGrain<IVirtualMachineClusterGrain>(0).GetSilosAsync(Ct);
        Assert.Equal(2, silos.Length);
        Assert.All(silos, s => Assert.Equal(2, s.VirtualMachines)); // 16 MiB each: the emptier silo each time
        Assert.All(silos, s => Assert.Equal(32L << 20, s.FreeMemoryBytes));

        var tooBig = await Assert.ThrowsAnyAsync<Exception>(() => cluster.Grains.GetGrain<IVirtualMachineGrain>("too-big").CreateAsync(CounterGuest.Spec() with { MemoryMiB = 48 }, Ct));
        Assert.True(HasCapacityRefusal(tooBig), tooBig.ToString());

        var fits = await cluster.Grains.GetGrain<IVirtualMachineGrain>("fits").CreateAsync(CounterGuest.Spec() with { MemoryMiB = 32 }, Ct);
        Assert.Equal(VirtualMachineGrainState.Created, fits.State);
    }

    [Fact]
    public async Task Draining_a_silo_moves_its_running_vms_live_and_they_keep_answering_throughout()
    {
        await using var cluster = await VmCluster.StartAsync();
        await ViewsSeeAsync(cluster, 0);
        var spec = CounterGuest.Spec() with { DirtyPageTracking = true };
        var names = new[] { "drain-a", "drain-b" };
        var vms = new List<IVirtualMachineGrain>();
        foreach (string name in names)
        {
            var vm = cluster.Grains.GetGrain<IVirtualMachineGrain>(name);
            var created = await VmCluster.OnSiloAsync(cluster.Secondary, () => vm.CreateAsync(spec, Ct));
            Assert.Equal(cluster.Secondary.SiloAddress, created.Silo);
            await vm.StartAsync(Ct);
            await vm.WaitForConsoleAsync(CounterGuest.Ready, 0, Wait, Ct);
            vms.Add(vm);
        }

        // Callers read the guests' counters through the whole drain; every call must be answered.
        using var stop = new CancellationTokenSource();
        var failures = new ConcurrentQueue<Exception>();
        long answered = 0;
        var callers = vms.Select(vm => Task.Run(async () =>
        {
            while (!stop.IsCancellationRequested)
            {
                try
                {
                    await CounterAsync(vm);
                    Interlocked.Increment(ref answered);
                }
                catch (Exception ex)
                {
                    failures.Enqueue(ex);
                }
            }
        })).ToList();
        await UntilAsync(() => Task.FromResult(Interlocked.Read(ref answered) > 10), "the callers' first answers");
        var before = new List<ulong>();
        foreach (var vm in vms)
        {
            before.Add(await CounterAsync(vm));
        }

        var host = cluster.Grains.GetVirtualMachineHost(cluster.Secondary.SiloAddress);
        var report = await host.DrainAsync(Ct);
        long atDrainEnd = Interlocked.Read(ref answered);
        await UntilAsync(() => Task.FromResult(Interlocked.Read(ref answered) > atDrainEnd + 10), "answers after the drain");
        await stop.CancelAsync();
        await Task.WhenAll(callers);

        Assert.Empty(failures);
        Assert.Empty(report.Failed);
        Assert.Equal(names.Order(), report.Moved.Keys.Order());
        Assert.All(report.Moved.Values, target => Assert.Equal(cluster.Primary.SiloAddress, target));
        Assert.Empty(await host.GetVirtualMachinesAsync(Ct));
        for (int i = 0; i < vms.Count; i++)
        {
            var status = await vms[i].GetStatusAsync(Ct);
            Assert.Equal(cluster.Primary.SiloAddress, status.Silo);
            Assert.Equal(VirtualMachineGrainState.Running, status.State);
            ulong after = await CounterAsync(vms[i]);
            Assert.True(after >= before[i], $"counter {after} after the drain, {before[i]} before it");
            var metrics = await vms[i].GetMetricsAsync(Ct);
            Assert.True(metrics.LastMoveLive, "the VM moved by live migration");
            Assert.Equal(1, metrics.Moves);
            Assert.NotNull(metrics.LastMoveDowntime);
            Assert.True(metrics.LastMigrationRounds >= 1);
            Assert.Equal(0, metrics.SnapshotsSaved); // never saved: it went over the silo-to-silo connection
            var console = await vms[i].ReadConsoleAsync(0, cancellationToken: Ct);
            Assert.Equal(CounterGuest.Ready, console.Text); // never booted again
            Assert.Equal("LIVE", (await vms[i].ExecAsync("live", "LIVE", Wait, Ct)).Text);
        }

        // A draining silo gets no new VMs until it is undrained.
        Assert.True((await host.GetCapacityAsync(Ct)).Draining);
        await UntilAsync(
            async () => (await cluster.Grains.GetVirtualMachineHost(cluster.Primary.SiloAddress).GetClusterViewAsync(Ct)).Any(s => s.Draining)
                && (await cluster.Grains.GetVirtualMachineHost(cluster.Secondary.SiloAddress).GetClusterViewAsync(Ct)).Any(s => s.Draining),
            "both silos' placement to see the drain");
        var fresh = await cluster.Grains.GetGrain<IVirtualMachineGrain>("after-drain").CreateAsync(CounterGuest.Spec(), Ct);
        Assert.Equal(cluster.Primary.SiloAddress, fresh.Silo);
        await host.UndrainAsync(Ct);
        Assert.False((await host.GetCapacityAsync(Ct)).Draining);
    }

    [Fact]
    public async Task A_hundred_concurrent_sandbox_calls_spread_over_both_silos_and_every_one_is_answered()
    {
        await using var cluster = await VmCluster.StartAsync();
        await ViewsSeeAsync(cluster, 0);
        var calls = Enumerable.Range(0, 100).Select(i => cluster.Grains.GetGrain<ISandboxGrain>(i).RunAsync(
            new SandboxRequest { Program = "upper", Stdin = Encoding.ASCII.GetBytes($"call {i}") }, Ct)).ToList();
        var results = await Task.WhenAll(calls);
        for (int i = 0; i < results.Length; i++)
        {
            Assert.Equal(SandboxCallStatus.Exited, results[i].Status);
            Assert.Equal(0, results[i].ExitCode);
            Assert.Equal($"CALL {i}", results[i].StdoutText);
        }

        Assert.Equal(2, results.Select(r => r.Silo).Distinct().Count());
    }

    [Fact]
    public async Task When_every_sandbox_pool_is_full_a_call_is_refused_and_a_calls_own_time_limit_ends_its_run()
    {
        await using var cluster = await VmCluster.StartAsync(sandboxWaiting: 0);
        await ViewsSeeAsync(cluster, 0);
        var spin = new SandboxRequest { Program = "spin", Stdin = [1], TimeLimit = TimeSpan.FromSeconds(3) };
        var first = cluster.Grains.GetGrain<ISandboxGrain>(0).RunAsync(spin, Ct);
        var second = cluster.Grains.GetGrain<ISandboxGrain>(1).RunAsync(spin, Ct);
        await UntilAsync(
            async () =>
            {
                foreach (var silo in new[] { cluster.Primary, cluster.Secondary })
                {
                    if ((await cluster.Grains.GetVirtualMachineHost(silo.SiloAddress).GetCapacityAsync(Ct)).SandboxesBusy < 1)
                    {
                        return false;
                    }
                }

                return true;
            },
            "both silos' spin sandbox to be busy");

        var refused = await Assert.ThrowsAsync<ClusterCapacityException>(() => cluster.Grains.GetGrain<ISandboxGrain>(2).RunAsync(spin, Ct));
        Assert.Contains("retry later", refused.Message, StringComparison.Ordinal);

        foreach (var run in new[] { await first, await second })
        {
            Assert.Equal(SandboxCallStatus.TimeLimitExceeded, run.Status);
            Assert.Contains("time limit", run.Message, StringComparison.Ordinal);
        }

        Assert.NotEqual((await first).Silo, (await second).Silo);
        var again = await cluster.Grains.GetGrain<ISandboxGrain>(2).RunAsync(new SandboxRequest { Program = "upper", Stdin = "ok"u8.ToArray(), MaxOutputBytes = 1 }, Ct);
        Assert.Equal("O", again.StdoutText);
        Assert.True(again.OutputTruncated);

        var unknown = await Assert.ThrowsAsync<ArgumentException>(() => cluster.Grains.GetGrain<ISandboxGrain>(3).RunAsync(new SandboxRequest { Program = "nope" }, Ct));
        Assert.Contains("nope", unknown.Message, StringComparison.Ordinal);
        await Assert.ThrowsAsync<ArgumentException>(() => cluster.Grains.GetGrain<ISandboxGrain>(3).RunAsync(spin with { TimeLimit = TimeSpan.FromHours(1) }, Ct));
    }

    /// <summary>Silos publish deltas: a change of one silo's report reaches the other's view, and a silo that leaves drops out of it.</summary>
    [Fact]
    public async Task A_silos_change_and_its_departure_reach_the_other_silos_view()
    {
        await using var cluster = await VmCluster.StartAsync();
        await ViewsSeeAsync(cluster, 0);
        var primary = cluster.Grains.GetVirtualMachineHost(cluster.Primary.SiloAddress);
        var secondary = cluster.Grains.GetVirtualMachineHost(cluster.Secondary.SiloAddress);
        var secondaryAddress = cluster.Secondary.SiloAddress;
        async Task<SiloCapacity?> SecondaryAsSeenByPrimaryAsync() =>
            (await primary.GetClusterViewAsync(Ct)).SingleOrDefault(s => s.Silo.Equals(secondaryAddress));

        await secondary.DrainAsync(Ct);
        await UntilAsync(async () => (await SecondaryAsSeenByPrimaryAsync())?.Draining == true, "the primary to see the secondary draining");
        await secondary.UndrainAsync(Ct);
        await UntilAsync(async () => (await SecondaryAsSeenByPrimaryAsync())?.Draining == false, "the primary to see the secondary undrained");

        await cluster.Cluster.StopSiloAsync(cluster.Secondary, Ct);
        await UntilAsync(async () => (await primary.GetClusterViewAsync(Ct)).Length == 1, "the primary's view to drop the stopped silo");
        Assert.Null(await SecondaryAsSeenByPrimaryAsync());
    }
}
