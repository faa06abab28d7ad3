// OrleansCluster: two Orleans silos in one process on localhost, sharing a directory for VM snapshots and grain
// state. A VM grain runs a small guest (it counts in memory and answers on its serial console), moves to the other
// silo, and survives the shutdown of the silo it runs on: its grain comes back on the remaining silo from the snapshot
// saved on the way out, and the guest counts on. Each step prints where the VM runs.
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
string storage = Path.Combine(Path.GetTempPath(), "virt-orleans-sample-" + Environment.ProcessId);
using var timeout = new CancellationTokenSource(TimeSpan.FromMinutes(3));
var ct = timeout.Token;

int primaryPort = FreePort();
using var siloA = await StartSiloAsync("A", primaryPort, primaryPort, ct);
using var siloB = await StartSiloAsync("B", FreePort(), primaryPort, ct);
var names = new Dictionary<SiloAddress, string>
{
    [Address(siloA)] = "A",
    [Address(siloB)] = "B",
};

try
{
    var grains = siloA.Services.GetRequiredService<IGrainFactory>();
    var vm = grains.GetGrain<IVirtualMachineGrain>("counter");
    var spec = new VirtualMachineSpec { MemoryMiB = 16, Backend = backend, FlatImage = Guest(), LoadAddress = Load };
    Print("created", await vm.CreateAsync(spec, ct));
    Print("started", await vm.StartAsync(ct));
    await vm.WaitForConsoleAsync("ready\n", 0, TimeSpan.FromSeconds(30), ct);
    Console.WriteLine($"console: {(await vm.ExecAsync("hello", "HELLO", TimeSpan.FromSeconds(30), ct)).Text}");
    Console.WriteLine($"counter: {await CounterAsync(vm)}");

    var target = (await vm.GetStatusAsync(ct)).Silo.Equals(Address(siloA)) ? Address(siloB) : Address(siloA);
    var moved = await MoveAsync(vm, target, ct);
    Print("moved", moved);
    Console.WriteLine($"counter: {await CounterAsync(vm)}");

    // Shut down the silo the VM runs on (never A, which keeps the cluster's membership in this sample).
    if (moved.Silo.Equals(Address(siloA)))
    {
        await MoveAsync(vm, Address(siloB), ct);
    }

    ulong before = await CounterAsync(vm);
    Console.WriteLine($"stopping silo B with the VM on it (counter {before})");
    await siloB.StopAsync(ct);
    var watch = Stopwatch.StartNew();
    var back = await vm.GetStatusAsync(ct);
    Print($"back after {watch.Elapsed.TotalMilliseconds:F0} ms", back);
    ulong after = await CounterAsync(vm);
    Console.WriteLine($"counter: {after} ({(after >= before ? "continued" : "RESTARTED")})");
    var metrics = await vm.GetMetricsAsync(ct);
    Console.WriteLine($"snapshots saved: {metrics.SnapshotsSaved}, restores: {metrics.Restores}, last restore {metrics.LastRestoreDuration.TotalMilliseconds:F1} ms, last save {metrics.LastSaveDuration.TotalMilliseconds:F1} ms");
    await vm.DeleteAsync(ct);
    return after >= before && back.Restored ? 0 : 1;
}
finally
{
    await siloA.StopAsync(CancellationToken.None);
    Directory.Delete(storage, recursive: true);
}

void Print(string what, VirtualMachineStatus status) =>
    Console.WriteLine($"{what,-20} {status.Name}: {status.State} on silo {names.GetValueOrDefault(status.Silo, status.Silo.ToString())} ({status.Backend}){(status.Restored ? ", restored from its snapshot" : "")}");

// Asks for the move and waits until the grain answers from the target. The move happens once the grain is idle; if
// the target silo was not yet a placement candidate when it was asked for, the grain stays and the move is asked again.
static async Task<VirtualMachineStatus> MoveAsync(IVirtualMachineGrain vm, SiloAddress target, CancellationToken ct)
{
    while (true)
    {
        await vm.MoveAsync(target, ct);
        var asked = Stopwatch.StartNew();
        while (asked.Elapsed < TimeSpan.FromSeconds(5))
        {
            await Task.Delay(20, ct);
            var status = await vm.GetStatusAsync(ct);
            if (status.Silo.Equals(target))
            {
                return status;
            }
        }
    }
}

static async Task<ulong> CounterAsync(IVirtualMachineGrain vm) => BitConverter.ToUInt64(await vm.ReadMemoryAsync(Counter, 8));

static SiloAddress Address(IHost silo) => silo.Services.GetRequiredService<ILocalSiloDetails>().SiloAddress;

async Task<IHost> StartSiloAsync(string name, int siloPort, int primary, CancellationToken cancellationToken)
{
    var builder = Host.CreateApplicationBuilder();
    builder.Logging.SetMinimumLevel(LogLevel.Error);
    builder.UseOrleans(silo => silo
        .UseLocalhostClustering(siloPort, FreePort(), new IPEndPoint(IPAddress.Loopback, primary))
        .Configure<Orleans.Configuration.SiloOptions>(o => o.SiloName = name)
        .AddVirtualMachineGrains()
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

// Long mode: print "ready" on COM1, then count at 0x50000 forever, echoing each byte received on COM1 upper-cased.
static byte[] Guest()
{
    var a = new Assembler(64);
    var loop = a.CreateLabel();
    var emit = a.CreateLabel();
    a.mov(dx, 0x3F8);
    foreach (char c in "ready\n")
    {
        a.mov(al, (byte)c);
        a.@out(dx, al);
    }

    a.Label(ref loop);
    a.inc(__qword_ptr[Counter]);
    a.mov(dx, 0x3FD);
    a.@in(al, dx);
    a.test(al, 1);
    a.jz(loop);
    a.mov(dx, 0x3F8);
    a.@in(al, dx);
    a.cmp(al, (byte)'a');
    a.jb(emit);
    a.cmp(al, (byte)'z');
    a.ja(emit);
    a.sub(al, 0x20);
    a.Label(ref emit);
    a.@out(dx, al);
    a.jmp(loop);
    var code = new List<byte>();
    a.Assemble(new Writer(code), Load);
    return [.. code];
}

internal sealed class Writer(List<byte> bytes) : CodeWriter
{
    public override void WriteByte(byte value) => bytes.Add(value);
}
