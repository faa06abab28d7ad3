// OrleansCluster: three Orleans silos in one process on localhost, sharing a directory for VM snapshots and grain
// state. Ten small VMs (a flat guest that prints "ready" and counts in memory) are placed by capacity, so they
// spread over the silos. Silo B is drained: its VMs move to the others by live migration over the silos' migration
// connections. Silo C is then stopped hard: its VMs come back on the remaining silo from their last snapshot. Each
// step prints where every VM runs.
//
// The VMs are paused once they have booted, so ten interpreter guests do not compete for a small machine's cores; a
// running VM moves the same way, with only the last round of its memory copied while it is paused.
//
//   dotnet run -c Release --project samples/OrleansCluster [-- --backend interpreter|kvm|auto]
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using Iced.Intel;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Orleans;
using Orleans.Configuration;
using Orleans.Hosting;
using Orleans.Runtime;
using Virt.Orleans;
using static Iced.Intel.AssemblerRegisters;

var backend = VirtualMachineBackend.Interpreter;
for (int i = 0; i < args.Length; i++)
{
    if (args[i] == "--backend" && i + 1 < args.Length)
    {
        backend = args[++i].ToLowerInvariant() switch
        {
            "kvm" => VirtualMachineBackend.Kvm,
            "interpreter" => VirtualMachineBackend.Interpreter,
            "auto" => VirtualMachineBackend.Auto,
            var other => throw new ArgumentException($"Unknown backend '{other}'; use interpreter, kvm or auto."),
        };
    }
}

const ulong Load = 0x100000, Counter = 0x50000;
const int Count = 10;
string storage = Path.Combine(Path.GetTempPath(), "virt-orleans-sample-" + Environment.ProcessId);
using var timeout = new CancellationTokenSource(TimeSpan.FromMinutes(3));
var ct = timeout.Token;

int primaryPort = FreePort();
using var siloA = await StartSiloAsync("A", primaryPort, primaryPort, ct);
using var siloB = await StartSiloAsync("B", FreePort(), primaryPort, ct);
using var siloC = await StartSiloAsync("C", FreePort(), primaryPort, ct);
var names = new Dictionary<SiloAddress, string> { [Address(siloA)] = "A", [Address(siloB)] = "B", [Address(siloC)] = "C" };
string SiloName(SiloAddress silo) => names.GetValueOrDefault(silo, silo.ToString());

try
{
    var grains = siloA.Services.GetRequiredService<IGrainFactory>();
    var cluster = grains.GetGrain<IVirtualMachineClusterGrain>(0);
    while ((await cluster.GetSilosAsync(ct)).Length < 3)
    {
        await Task.Delay(50, ct); // until every silo has published its capacity
    }

    var spec = new VirtualMachineSpec { MemoryMiB = 8, Backend = backend, FlatImage = Guest(), LoadAddress = Load, DirtyPageTracking = true };
    var vms = Enumerable.Range(0, Count).Select(i => grains.GetGrain<IVirtualMachineGrain>($"appliance-{i}")).ToList();
    foreach (var vm in vms)
    {
        await vm.CreateAsync(spec, ct);
        await vm.StartAsync(ct);
    }

    foreach (var vm in vms)
    {
        await vm.WaitForConsoleAsync("ready\n", 0, TimeSpan.FromSeconds(60), ct);
        await vm.PauseAsync(ct);
        await vm.SaveAsync(ct); // the last snapshot, for the hard stop below
    }

    var counters = new Dictionary<int, ulong>();
    for (int i = 0; i < Count; i++)
    {
        counters[i] = await CounterAsync(vms[i]);
    }

    await PrintAsync("placed by capacity", vms, ct);
    await PrintCapacityAsync(cluster, ct);

    var drain = await grains.GetVirtualMachineHost(Address(siloB)).DrainAsync(ct);
    int live = 0;
    foreach (var name in drain.Moved.Keys)
    {
        live += (await grains.GetGrain<IVirtualMachineGrain>(name).GetMetricsAsync(ct)).LastMoveLive ? 1 : 0;
    }

    Console.WriteLine($"drained B in {drain.Duration.TotalMilliseconds:F0} ms: {drain.Moved.Count} VMs moved ({live} live), {drain.Failed.Count} failed");
    foreach (var (name, reason) in drain.Failed)
    {
        Console.WriteLine($"  {name}: {reason}");
    }

    await PrintAsync("after the drain of B", vms, ct);

    var onC = new List<int>();
    for (int i = 0; i < Count; i++)
    {
        if ((await vms[i].GetStatusAsync(ct)).Silo.Equals(Address(siloC)))
        {
            onC.Add(i);
        }
    }

    Console.WriteLine($"stopping silo C hard with {onC.Count} VMs on it");
    var watch = Stopwatch.StartNew();
    using (var killed = new CancellationTokenSource())
    {
        await killed.CancelAsync();
        try
        {
            await siloC.StopAsync(killed.Token); // a cancelled stop: no graceful deactivation, no saves
        }
        catch (OperationCanceledException)
        {
        }
    }

    foreach (int i in onC)
    {
        await UntilAnsweredAsync(() => vms[i].GetStatusAsync(ct), ct);
    }

    Console.WriteLine($"C's VMs answered again after {watch.Elapsed.TotalMilliseconds:F0} ms (the cluster first has to declare C dead)");
    var statuses = await PrintAsync("after the hard stop of C", vms, ct);
    bool ok = drain.Failed.Count == 0 && drain.Moved.Count > 0;
    for (int i = 0; i < Count; i++)
    {
        ulong now = await CounterAsync(vms[i]);
        ok &= now == counters[i] && statuses[i].State == VirtualMachineGrainState.Paused && statuses[i].Silo.Equals(Address(siloA));
    }

    Console.WriteLine(ok ? $"all {Count} VMs answer on A with their guest state as saved" : "SOME VMs DID NOT COME BACK AS SAVED");
    foreach (var vm in vms)
    {
        await vm.DeleteAsync(ct);
    }

    return ok ? 0 : 1;
}
finally
{
    await siloB.StopAsync(CancellationToken.None);
    await siloA.StopAsync(CancellationToken.None);
    Directory.Delete(storage, recursive: true);
}

async Task<VirtualMachineStatus[]> PrintAsync(string when, List<IVirtualMachineGrain> vms, CancellationToken cancellationToken)
{
    var statuses = new VirtualMachineStatus[vms.Count];
    for (int i = 0; i < vms.Count; i++)
    {
        statuses[i] = await vms[i].GetStatusAsync(cancellationToken);
    }

    Console.WriteLine($"{when}:");
    foreach (var group in statuses.GroupBy(s => SiloName(s.Silo)).OrderBy(g => g.Key, StringComparer.Ordinal))
    {
        Console.WriteLine($"  silo {group.Key}: {string.Join(", ", group.Select(s => s.Name + (s.Restored ? " (restored from its snapshot)" : "")))}");
    }

    return statuses;
}

async Task PrintCapacityAsync(IVirtualMachineClusterGrain cluster, CancellationToken cancellationToken)
{
    foreach (var silo in (await cluster.GetSilosAsync(cancellationToken)).OrderBy(s => SiloName(s.Silo), StringComparer.Ordinal))
    {
        Console.WriteLine($"  silo {SiloName(silo.Silo)}: {silo.VirtualMachines} VMs, {silo.MemoryInUseBytes >> 20} of {silo.MemoryBudgetBytes >> 20} MiB, {silo.VcpusInUse} of {silo.VcpuBudget} vCPUs, KVM {(silo.Kvm ? (silo.KvmRunsKernels ? "(hardware)" : "(user mode only)") : "no")}");
    }
}

static async Task<T> UntilAnsweredAsync<T>(Func<Task<T>> call, CancellationToken cancellationToken)
{
    while (true)
    {
        try
        {
            return await call();
        }
        catch (Exception ex) when (ex is OrleansException or TimeoutException && !cancellationToken.IsCancellationRequested)
        {
            await Task.Delay(200, cancellationToken);
        }
    }
}

static async Task<ulong> CounterAsync(IVirtualMachineGrain vm) => BitConverter.ToUInt64(await vm.ReadMemoryAsync(Counter, 8));

static SiloAddress Address(IHost silo) => silo.Services.GetRequiredService<ILocalSiloDetails>().SiloAddress;

async Task<IHost> StartSiloAsync(string name, int siloPort, int primary, CancellationToken cancellationToken)
{
    var builder = Host.CreateApplicationBuilder();
    builder.Logging.SetMinimumLevel(LogLevel.Critical); // the hard stop below logs the saves it cuts short as errors
    builder.UseOrleans(silo => silo
        .UseLocalhostClustering(siloPort, FreePort(), new IPEndPoint(IPAddress.Loopback, primary))
        .Configure<SiloOptions>(o => o.SiloName = name)
        .Configure<ClusterMembershipOptions>(o =>
        {
            // Declare a silo that stopped answering dead within seconds (production defaults take longer).
            o.ProbeTimeout = TimeSpan.FromSeconds(1);
            o.NumMissedProbesLimit = 1;
            o.NumVotesForDeathDeclaration = 1;
            o.TableRefreshTimeout = TimeSpan.FromSeconds(1);
            o.IAmAliveTablePublishTimeout = TimeSpan.FromSeconds(1);
        })
        .AddVirtualMachineGrains(o =>
        {
            o.MemoryBudgetMiB = 96;
            o.CapacityPublishInterval = TimeSpan.FromMilliseconds(250);
        })
        .AddVirtualMachineFileStorage(storage));
    var host = builder.Build();
    await host.StartAsync(cancellationToken);
    return host;
}

static int FreePort()
{
    using var listener = new TcpListener(IPAddress.Loopback, 0);
    listener.Start();
    return ((IPEndPoint)listener.LocalEndpoint).Port;
}

// Long mode: print "ready" on COM1, then count at 0x50000 forever.
static byte[] Guest()
{
    var a = new Assembler(64);
    var loop = a.CreateLabel();
    a.mov(dx, 0x3F8);
    foreach (char c in "ready\n")
    {
        a.mov(al, (byte)c);
        a.@out(dx, al);
    }

    a.Label(ref loop);
    a.inc(__qword_ptr[Counter]);
    a.jmp(loop);
    var code = new List<byte>();
    a.Assemble(new Writer(code), Load);
    return [.. code];
}

internal sealed class Writer(List<byte> bytes) : CodeWriter
{
    public override void WriteByte(byte value) => bytes.Add(value);
}
