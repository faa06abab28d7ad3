using Virt.Boot;
using Virt.Testing;
using Xunit;
using static Iced.Intel.AssemblerRegisters;

namespace Virt.Sdk.Tests;

/// <summary>
/// Admission against a pool's capacity, and the pool's CPU scheduler: shares under contention, caps, and idle VMs that
/// leave the CPU to busy ones. CPU is what the host measured for the vCPU threads (no wall-clock asserts: the ratios hold
/// whatever else the machine runs).
/// </summary>
public sealed class ResourcePoolTests
{
    private const ulong Load = 0x100000;

    public static TheoryData<string> Backends => FlatGuestVm.Backends;

    [Fact]
    public async Task A_vm_that_does_not_fit_is_refused_with_a_message_naming_the_short_resource()
    {
        using var pool = new ResourcePool(new ResourcePoolOptions { Cpus = 1, MemoryBytes = 100UL << 20, VcpuOvercommit = 2, NetworkBytesPerSecond = 1_000_000 });
        await using var first = SpinningVm("interpreter", pool, "first", new ResourceRequest()).WithMemoryMiB(64).Build();

        var memory = Assert.Throws<ResourceExhaustedException>(() => SpinningVm("interpreter", pool, "second", new ResourceRequest()).WithMemoryMiB(64).Build());
        Assert.Equal(ResourceKind.Memory, memory.Resource);
        Assert.Equal("second", memory.MachineName);
        Assert.Equal(64.0 * (1 << 20), memory.Requested);
        Assert.Equal(36.0 * (1 << 20), memory.Available);
        Assert.Contains("28 MiB short", memory.Message, StringComparison.Ordinal);

        var vcpus = Assert.Throws<ResourceExhaustedException>(() => SpinningVm("interpreter", pool, "wide", new ResourceRequest()).WithMemoryMiB(16).WithVcpus(2).Build());
        Assert.Equal(ResourceKind.Vcpus, vcpus.Resource);
        Assert.Contains("vCPU", vcpus.Message, StringComparison.Ordinal);

        var network = Assert.Throws<ResourceExhaustedException>(() => SpinningVm("interpreter", pool, "chatty", new ResourceRequest { NetworkBytesPerSecond = 2_000_000 }).WithMemoryMiB(16).Build());
        Assert.Equal(ResourceKind.NetworkBandwidth, network.Resource);

        Assert.Throws<ArgumentException>(() => SpinningVm("interpreter", pool, "first", new ResourceRequest()).WithMemoryMiB(16).Build());
        Assert.Equal(4, pool.RefusedCount);

        // Leaving gives the share back.
        await first.DisposeAsync();
        await using var second = SpinningVm("interpreter", pool, "second", new ResourceRequest()).WithMemoryMiB(64).Build();
        Assert.Equal(64UL << 20, pool.MemoryCharged);
        Assert.Single(pool.GetUsage());
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public async Task Two_busy_vms_with_shares_two_to_one_get_cpu_in_that_ratio(string backend)
    {
        using var pool = new ResourcePool(new ResourcePoolOptions { Cpus = 1 });
        await using var heavy = SpinningVm(backend, pool, "heavy", new ResourceRequest { CpuShares = 2048 }).Build();
        await using var light = SpinningVm(backend, pool, "light", new ResourceRequest { CpuShares = 1024 }).Build();
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
        timeout.CancelAfter(TimeSpan.FromMinutes(3));
        await heavy.StartAsync(timeout.Token);
        await light.StartAsync(timeout.Token);

        // Measure from the moment both have had the CPU, until they used 3 s of it between them.
        await WaitUntilAsync(() => Usage(pool, "heavy").SlotGrants > 1 && Usage(pool, "light").SlotGrants > 1, timeout.Token);
        var heavy0 = Usage(pool, "heavy").CpuTime;
        var light0 = Usage(pool, "light").CpuTime;
        await WaitUntilAsync(() => Usage(pool, "heavy").CpuTime - heavy0 + (Usage(pool, "light").CpuTime - light0) > TimeSpan.FromSeconds(3), timeout.Token);
        await heavy.StopAsync(timeout.Token);
        await light.StopAsync(timeout.Token);

        double ratio = (Usage(pool, "heavy").CpuTime - heavy0) / (Usage(pool, "light").CpuTime - light0);
        Assert.True(ratio is > 1.8 and < 2.2, $"CPU ratio {ratio:0.00}, expected 2 +/- 10% (heavy {Usage(pool, "heavy")}, light {Usage(pool, "light")})");
    }

    [Fact]
    public async Task Ten_busy_vms_on_two_cpus_get_cpu_by_their_shares()
    {
        // More vCPUs than slots, so every grant goes through the queue: a vCPU granted a slot while the host had not
        // yet woken its thread must still get its turn (it was once left waiting for good, starving its VM).
        int[] shares = [2048, 2048, 2048, 1024, 1024, 1024, 1024, 1024, 1024, 1024];
        using var pool = new ResourcePool(new ResourcePoolOptions { Cpus = 2, VcpuOvercommit = 5 });
        var vms = new List<VirtualMachine>();
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
        timeout.CancelAfter(TimeSpan.FromMinutes(3));
        try
        {
            for (int i = 0; i < shares.Length; i++)
            {
                vms.Add(SpinningVm("interpreter", pool, $"vm{i}", new ResourceRequest { CpuShares = shares[i] }).Build());
                await vms[i].StartAsync(timeout.Token);
            }

            await WaitUntilAsync(() => pool.GetUsage().All(u => u.SlotGrants > 1), timeout.Token);
            var start = pool.GetUsage().ToDictionary(u => u.Name, u => u.CpuTime);
            TimeSpan Used() => pool.GetUsage().Aggregate(TimeSpan.Zero, (sum, u) => sum + (u.CpuTime - start[u.Name]));
            await WaitUntilAsync(() => Used() > TimeSpan.FromSeconds(5), timeout.Token);
            var used = pool.GetUsage().ToDictionary(u => u.Name, u => (u.CpuTime - start[u.Name]).TotalMilliseconds);
            foreach (var vm in vms)
            {
                await vm.StopAsync(timeout.Token);
            }

            var perShare = Enumerable.Range(0, shares.Length).Select(i => used[$"vm{i}"] / shares[i]).ToArray();
            double mean = perShare.Average();
            string figures = string.Join(", ", Enumerable.Range(0, shares.Length).Select(i => $"vm{i} ({shares[i]}): {used[$"vm{i}"]:0} ms"));
            Assert.All(perShare, p => Assert.True(Math.Abs((p / mean) - 1) < 0.2, $"CPU per share {p / mean:0.00} of the mean; {figures}"));
        }
        finally
        {
            foreach (var vm in vms)
            {
                await vm.DisposeAsync();
            }
        }
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public async Task A_capped_vm_uses_no_more_than_its_cap_with_cpus_free(string backend)
    {
        using var pool = new ResourcePool(new ResourcePoolOptions { Cpus = 2 });
        await using var vm = SpinningVm(backend, pool, "capped", new ResourceRequest { CpuLimit = 0.5 }).Build();
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
        timeout.CancelAfter(TimeSpan.FromMinutes(2));
        await vm.StartAsync(timeout.Token);
        await WaitUntilAsync(() => Usage(pool, "capped").CpuTime > TimeSpan.FromMilliseconds(100), timeout.Token);
        var cpu0 = Usage(pool, "capped").CpuTime;
        var wall = System.Diagnostics.Stopwatch.StartNew();
        await WaitUntilAsync(() => Usage(pool, "capped").CpuTime - cpu0 > TimeSpan.FromSeconds(1), timeout.Token);
        var used = Usage(pool, "capped").CpuTime - cpu0;
        wall.Stop();
        await vm.StopAsync(timeout.Token);

        // The budget holds two slices of burst; beyond that the VM gets half a CPU per second of wall time at most.
        var allowed = (wall.Elapsed * 0.5) + (pool.Options.TimeSlice * 3);
        // (Whether it was throttled at all depends on how much CPU the host gave it; the bound is what is promised.)
        Assert.True(used <= allowed, $"used {used.TotalMilliseconds:0} ms of CPU in {wall.Elapsed.TotalMilliseconds:0} ms with a cap of 0.5 (allowed {allowed.TotalMilliseconds:0}); {Usage(pool, "capped")}");
    }

    [Fact]
    public async Task An_idle_vm_leaves_the_pools_only_cpu_to_a_busy_one()
    {
        using var pool = new ResourcePool(new ResourcePoolOptions { Cpus = 1 });
        var idleCode = GuestProgram.Assemble(64, Load, a =>
        {
            var loop = a.CreateLabel();
            a.sti();
            a.Label(ref loop);
            a.hlt();
            a.jmp(loop);
        });
        await using var idle = FlatGuestVm.Builder("interpreter")
            .WithName("idle")
            .WithResourcePool(pool)
            .WithInterruptController()
            .WithFlatBinary(idleCode, new GuestAddress(Load))
            .WithEntryPoint(new GuestAddress(Load), StartMode.Long64)
            .Build();
        await using var busy = SpinningVm("interpreter", pool, "busy", new ResourceRequest()).Build();
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
        timeout.CancelAfter(TimeSpan.FromMinutes(2));
        await idle.StartAsync(timeout.Token);
        await busy.StartAsync(timeout.Token);

        await WaitUntilAsync(() => Usage(pool, "busy").CpuTime > TimeSpan.FromSeconds(1), timeout.Token);
        var busyUsage = Usage(pool, "busy");
        var idleUsage = Usage(pool, "idle");
        await busy.StopAsync(timeout.Token);
        await idle.StopAsync(timeout.Token);

        // The halted VM gives the slot up at the first tick and, however often its timer wakes it, does not queue for
        // it again while its work stays light, so the busy VM keeps the CPU. (A VM that took the slot at every wake
        // would preempt the busy one about ten times a second, a dozen times or more before the busy VM has had its
        // second of CPU; a host so loaded that a wake-up waits three ticks for a CPU may still count as busy a few
        // times: 5 were seen with two busy loops beside the test run on two cores.)
        Assert.True(busyUsage.Preemptions <= 6, $"busy VM preempted {busyUsage.Preemptions} times; idle VM: {idleUsage}");
        Assert.True(idleUsage.SlotGrants <= 5, $"idle VM took the CPU {idleUsage.SlotGrants} times");
        Assert.True(idleUsage.CpuTime < busyUsage.CpuTime / 10, $"idle {idleUsage.CpuTime}, busy {busyUsage.CpuTime}");
    }

    [Fact]
    public async Task A_quiet_vm_answers_at_once_beside_a_busy_neighbour_without_queueing_for_the_cpu()
    {
        // One CPU for two VMs: a neighbour that never sleeps, and a quiet VM that sleeps until the host rings its
        // doorbell. The promise (docs/resources.md) is that a waking VM whose work stays light runs without queueing
        // behind busy VMs for a slot, so its requests wait for the host's scheduler only, never for a time slice.
        using var pool = new ResourcePool(new ResourcePoolOptions { Cpus = 1 });
        await using var noisy = SpinningVm("interpreter", pool, "noisy", new ResourceRequest()).Build();
        DoorbellDevice? doorbell = null;
        var builder = FlatGuestVm.Builder("interpreter")
            .WithName("quiet")
            .WithResourcePool(pool)
            .WithInterruptController()
            .WithDevice("doorbell", new DeviceResources { Port = DoorbellGuest.Port, PortCount = 1, Irq = DoorbellGuest.Irq }, context => doorbell = new DoorbellDevice(context.InterruptLine));
        foreach (var (image, address) in DoorbellGuest.Segments)
        {
            builder = builder.WithFlatBinary(image, new GuestAddress(address));
        }

        await using var quiet = builder.WithEntryPoint(new GuestAddress(DoorbellGuest.Entry), StartMode.Long64).Build();
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
        timeout.CancelAfter(TimeSpan.FromMinutes(3));
        await noisy.StartAsync(timeout.Token);
        await WaitUntilAsync(() => Usage(pool, "noisy").CpuTime > TimeSpan.FromMilliseconds(200), timeout.Token);
        await quiet.StartAsync(timeout.Token);

        const int requests = 100;
        var latencies = new List<TimeSpan>(requests);
        for (int i = 0; i < requests; i++)
        {
            latencies.Add(await doorbell!.RequestAsync(timeout.Token));
        }

        var quietUsage = Usage(pool, "quiet");
        var noisyUsage = Usage(pool, "noisy");
        await quiet.StopAsync(timeout.Token);
        await noisy.StopAsync(timeout.Token);

        latencies.Sort();
        string figures = $"latency p50 {latencies[requests / 2].TotalMicroseconds:0} us, p99 {latencies[(requests * 99) / 100].TotalMicroseconds:0} us; quiet {quietUsage}; noisy {noisyUsage}";
        Assert.Equal(requests, doorbell!.Acknowledged);

        // Were the quiet VM's wake-ups queued for the slot, it would take one per request (100) and wait behind the
        // busy VM's grants. It may be counted busy once or twice when the host delays a wake-up by a few ticks.
        Assert.True(quietUsage.SlotGrants <= 5, $"the quiet VM queued for the CPU {quietUsage.SlotGrants} times; {figures}");
        Assert.True(quietUsage.MaxGrantsWaited <= 1, $"the quiet VM waited through {quietUsage.MaxGrantsWaited} grants to others; {figures}");
        Assert.True(noisyUsage.CpuTime > quietUsage.CpuTime, figures);
    }

    private static ResourceUsage Usage(ResourcePool pool, string name) =>
        pool.GetUsage(name) ?? throw new InvalidOperationException($"VM '{name}' is not in the pool.");

    private static async Task WaitUntilAsync(Func<bool> condition, CancellationToken cancellationToken)
    {
        while (!condition())
        {
            await Task.Delay(20, cancellationToken);
        }
    }

    [Fact]
    public async Task Disk_and_network_limits_become_budgets_the_pool_reports_and_measures()
    {
        using var dir = new TempDirectory();
        string disk1 = Path.Combine(dir.Path, "a.img"), disk2 = Path.Combine(dir.Path, "b.img"), disk3 = Path.Combine(dir.Path, "c.img");
        foreach (var disk in (string[])[disk1, disk2, disk3])
        {
            Virt.Storage.DiskImage.CreateRaw(disk, 1 << 20);
        }

        var network = new Virt.Network.VirtualNetwork("budget-test");
        using var pool = new ResourcePool(new ResourcePoolOptions { Cpus = 1, MemoryBytes = 1UL << 30, DiskBytesPerSecond = 100 << 20 });
        var limited = new ResourceRequest { DiskBytesPerSecond = 10 << 20, DiskBytesPerSecondLimit = 20 << 20, DiskOperationsPerSecondLimit = 1000, NetworkBytesPerSecondLimit = 5 << 20 };
        await using var capped = SpinningVm("interpreter", pool, "capped", limited)
            .WithVirtioBlock(disk1).WithVirtioBlock(disk2).WithVirtioNet(network.Attach()).Build();
        await using var free = SpinningVm("interpreter", pool, "free", new ResourceRequest()).WithVirtioBlock(disk3).Build();

        var usage = pool.GetUsage("capped")!;
        Assert.Equal(0, usage.DiskBytes);
        Assert.Equal(0, usage.DiskOperations);
        Assert.Equal(0, usage.NetworkBytes);
        Assert.Equal(0, usage.DiskThrottled);
        var unlimited = pool.GetUsage("free")!;
        Assert.Null(unlimited.DiskBytes);
        Assert.Null(unlimited.NetworkBytes);

        // The pool's VMs are in the metrics, tagged by name.
        var seen = new List<(string Instrument, string? Vm)>();
        using (var listener = new System.Diagnostics.Metrics.MeterListener())
        {
            listener.InstrumentPublished = (instrument, l) =>
            {
                if (instrument.Meter.Name == "Virt.Sdk.Resources")
                {
                    l.EnableMeasurementEvents(instrument);
                }
            };
            listener.SetMeasurementEventCallback<long>((instrument, _, tags, _) => Record(instrument.Name, tags));
            listener.SetMeasurementEventCallback<double>((instrument, _, tags, _) => Record(instrument.Name, tags));
            listener.Start();
            listener.RecordObservableInstruments();
        }

        Assert.Contains(("virt.pool.disk.bytes", "capped"), seen);
        Assert.DoesNotContain(("virt.pool.disk.bytes", "free"), seen);
        Assert.Contains(("virt.pool.cpu.time", "free"), seen);
        Assert.Contains(("virt.pool.network.throttled", "capped"), seen);

        // A limit below the VM's own reservation is a configuration error.
        Assert.Throws<ArgumentException>(() => SpinningVm("interpreter", pool, "odd", new ResourceRequest { DiskBytesPerSecond = 10 << 20, DiskBytesPerSecondLimit = 1 << 20 }).Build());

        void Record(string instrument, ReadOnlySpan<KeyValuePair<string, object?>> tags)
        {
            foreach (var tag in tags)
            {
                if (tag.Key == "virt.vm.name")
                {
                    lock (seen)
                    {
                        seen.Add((instrument, tag.Value as string));
                    }
                }
            }
        }
    }

    private static VirtualMachineBuilder SpinningVm(string backend, ResourcePool pool, string name, ResourceRequest request)
    {
        var code = GuestProgram.Assemble(64, Load, a =>
        {
            var loop = a.CreateLabel();
            a.Label(ref loop);
            a.inc(rax);
            a.jmp(loop);
        });
        return FlatGuestVm.Builder(backend)
            .WithName(name)
            .WithResourcePool(pool, request)
            .WithFlatBinary(code, new GuestAddress(Load))
            .WithEntryPoint(new GuestAddress(Load), StartMode.Long64);
    }
}
