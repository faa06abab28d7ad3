using System.Diagnostics;
using System.Globalization;
using Virt.Boot;
using Virt.Testing;
using static Iced.Intel.AssemblerRegisters;

namespace Virt.Benchmarks.Sdk;

/// <summary>
/// VMs sharing a resource pool's CPUs on the interpreter, in one process:
/// <c>dotnet run -c Release --project tests/Virt.Benchmarks -- pool [requests]</c>.
/// <list type="bullet">
/// <item>CPU share ratios achieved by two busy VMs (shares 2:1) on one pool CPU, and by ten (three at 2048, seven at
/// 1024) on two.</item>
/// <item>The request latency (p50, p99) of a quiet VM that sleeps until the host rings its doorbell
/// (<see cref="DoorbellGuest"/>): alone, beside one busy VM on one pool CPU, and beside nine on two; and beside one
/// busy VM with no pool at all (the host scheduler alone), for comparison.</item>
/// <item>Admission decisions per second: a pool refusing VMs that do not fit, and admitting then releasing VMs that do.</item>
/// </list>
/// </summary>
internal static class PoolContention
{
    private const ulong Load = 0x100000;

    public static async Task RunAsync(int requests)
    {
        Console.WriteLine($"// {Environment.ProcessorCount} host CPUs; load average {LoadAverage()}");
        await SharesAsync("two VMs, 1 pool CPU", cpus: 1, [2048, 1024]);
        await SharesAsync("ten VMs, 2 pool CPUs", cpus: 2, [2048, 2048, 2048, 1024, 1024, 1024, 1024, 1024, 1024, 1024]);

        if (Environment.GetEnvironmentVariable("VIRT_POOL_SHARES_ONLY") == "1")
        {
            return;
        }

        await LatencyAsync("quiet VM alone, pool of 1 CPU", usePool: true, cpus: 1, neighbours: 0, requests);
        await LatencyAsync("quiet VM + 1 busy VM, pool of 1 CPU", usePool: true, cpus: 1, neighbours: 1, requests);
        await LatencyAsync("quiet VM + 9 busy VMs, pool of 2 CPUs", usePool: true, cpus: 2, neighbours: 9, requests);
        await LatencyAsync("quiet VM + 1 busy VM, no pool", usePool: false, cpus: 0, neighbours: 1, requests);
        await LatencyAsync("quiet VM + 9 busy VMs, no pool", usePool: false, cpus: 0, neighbours: 9, requests);

        await AdmissionsAsync();
    }

    private static async Task SharesAsync(string title, double cpus, int[] shares)
    {
        using var pool = new ResourcePool(new ResourcePoolOptions { Cpus = cpus, VcpuOvercommit = 10 });
        var vms = new List<VirtualMachine>();
        try
        {
            for (int i = 0; i < shares.Length; i++)
            {
                vms.Add(Spinning(pool, $"vm{i}", new ResourceRequest { CpuShares = shares[i] }).Build());
            }

            foreach (var vm in vms)
            {
                await vm.StartAsync();
            }

            // From the moment every VM has had the CPU, until they used 3 s of it per pool CPU between them.
            while (pool.GetUsage().Any(u => u.SlotGrants < 2))
            {
                await Task.Delay(20);
            }

            var start = pool.GetUsage().ToDictionary(u => u.Name, u => u.CpuTime);
            TimeSpan Used() => pool.GetUsage().Aggregate(TimeSpan.Zero, (sum, u) => sum + (u.CpuTime - start[u.Name]));
            while (Used() < TimeSpan.FromSeconds(3 * cpus))
            {
                await Task.Delay(20);
            }

            var used = pool.GetUsage().ToDictionary(u => u.Name, u => (u.CpuTime - start[u.Name]).TotalMilliseconds);
            foreach (var vm in vms)
            {
                await vm.StopAsync();
            }

            // CPU per share of each VM, relative to the mean: 1.00 everywhere is a perfect split.
            var perShare = Enumerable.Range(0, shares.Length).Select(i => used[$"vm{i}"] / shares[i]).ToArray();
            double mean = perShare.Average();
            double heavy = Enumerable.Range(0, shares.Length).Where(i => shares[i] == 2048).Sum(i => used[$"vm{i}"]) / shares.Count(s => s == 2048);
            double light = Enumerable.Range(0, shares.Length).Where(i => shares[i] == 1024).Sum(i => used[$"vm{i}"]) / shares.Count(s => s == 1024);
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{title}: CPU of a 2048-share VM / a 1024-share VM = {heavy / light:F2} (goal 2.00); CPU per share relative to the mean, min {perShare.Min() / mean:F2} max {perShare.Max() / mean:F2}"));
            Console.WriteLine("  CPU ms per VM (shares): " + string.Join(", ", Enumerable.Range(0, shares.Length).Select(i => string.Create(CultureInfo.InvariantCulture, $"{used[$"vm{i}"]:F0} ({shares[i]})"))));
            Console.WriteLine("  " + string.Join("; ", pool.GetUsage().Select(u => $"{u.Name}: {u.SlotGrants} grants, {u.Preemptions} preemptions")));
        }
        finally
        {
            foreach (var vm in vms)
            {
                await vm.DisposeAsync();
            }
        }
    }

    private static async Task LatencyAsync(string title, bool usePool, double cpus, int neighbours, int requests)
    {
        using var pool = usePool ? new ResourcePool(new ResourcePoolOptions { Cpus = cpus, VcpuOvercommit = 10 }) : null;
        var busy = new List<VirtualMachine>();
        DoorbellDevice? doorbell = null;
        var builder = VirtualMachine.CreateBuilder().WithInterpreter().WithMemoryMiB(16).WithName("quiet").WithInterruptController()
            .WithDevice("doorbell", new DeviceResources { Port = DoorbellGuest.Port, PortCount = 1, Irq = DoorbellGuest.Irq }, context => doorbell = new DoorbellDevice(context.InterruptLine));
        if (pool is not null)
        {
            builder = builder.WithResourcePool(pool);
        }

        foreach (var (image, address) in DoorbellGuest.Segments)
        {
            builder = builder.WithFlatBinary(image, new GuestAddress(address));
        }

        await using var quiet = builder.WithEntryPoint(new GuestAddress(DoorbellGuest.Entry), StartMode.Long64).Build();
        try
        {
            for (int i = 0; i < neighbours; i++)
            {
                var vm = Spinning(pool, $"busy{i}", new ResourceRequest()).Build();
                busy.Add(vm);
                await vm.StartAsync();
            }

            await Task.Delay(200);
            await quiet.StartAsync();
            var latencies = new double[requests];
            for (int i = 0; i < requests; i++)
            {
                latencies[i] = (await doorbell!.RequestAsync()).TotalMicroseconds;
            }

            Array.Sort(latencies);
            string grants = pool?.GetUsage("quiet") is { } u ? $"; quiet VM queued for a slot {u.SlotGrants} times, waited through at most {u.MaxGrantsWaited} grants" : string.Empty;
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{title}: {requests} requests, latency p50 {latencies[requests / 2]:F0} us, p99 {latencies[(requests * 99) / 100]:F0} us, max {latencies[^1]:F0} us{grants}"));
            await quiet.StopAsync();
        }
        finally
        {
            foreach (var vm in busy)
            {
                await vm.DisposeAsync();
            }
        }
    }

    private static async Task AdmissionsAsync()
    {
        using var full = new ResourcePool(new ResourcePoolOptions { Cpus = 1, MemoryBytes = 8UL << 20 });
        var clock = Stopwatch.StartNew();
        int refused = 0;
        while (clock.ElapsedMilliseconds < 2000)
        {
            try
            {
                await using var vm = Spinning(full, "too-big", new ResourceRequest()).Build();
            }
            catch (ResourceExhaustedException)
            {
                refused++;
            }
        }

        double refusedPerSecond = refused / clock.Elapsed.TotalSeconds;
        using var roomy = new ResourcePool(new ResourcePoolOptions { Cpus = 1 });
        clock.Restart();
        int admitted = 0;
        while (clock.ElapsedMilliseconds < 2000)
        {
            await using var vm = Spinning(roomy, "fits", new ResourceRequest()).Build();
            admitted++;
        }

        double admittedPerSecond = admitted / clock.Elapsed.TotalSeconds;
        clock.Restart();
        int plain = 0;
        while (clock.ElapsedMilliseconds < 2000)
        {
            await using var vm = Spinning(null, "plain", new ResourceRequest()).Build();
            plain++;
        }

        double plainPerSecond = plain / clock.Elapsed.TotalSeconds;
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"admission: {refusedPerSecond:F0} refusals/s; {admittedPerSecond:F0} VMs admitted, built and released per second against {plainPerSecond:F0} built and released without a pool (16 MiB interpreter VMs)"));
    }

    private static VirtualMachineBuilder Spinning(ResourcePool? pool, string name, ResourceRequest request)
    {
        var code = GuestProgram.Assemble(64, Load, a =>
        {
            var loop = a.CreateLabel();
            a.Label(ref loop);
            a.inc(rax);
            a.jmp(loop);
        });
        var builder = VirtualMachine.CreateBuilder().WithInterpreter().WithMemoryMiB(16).WithName(name)
            .WithFlatBinary(code, new GuestAddress(Load))
            .WithEntryPoint(new GuestAddress(Load), StartMode.Long64);
        return pool is null ? builder : builder.WithResourcePool(pool, request);
    }

    private static string LoadAverage() =>
        File.Exists("/proc/loadavg") ? File.ReadAllText("/proc/loadavg").Split(' ')[0] : "unknown";
}
