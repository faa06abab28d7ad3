// ResourcePool: three VMs share a pool of one CPU. "gold" and "silver" spin with CPU shares 2:1, so under
// contention gold gets twice silver's CPU; "capped" spins too but may use at most a fifth of a core. A fourth VM
// that would overcommit the pool's memory is refused with a message that names what is short.
//
//   dotnet run -c Release --project samples/ResourcePool [-- --backend kvm|interpreter|auto] [--seconds N]
using System.Globalization;
using Iced.Intel;
using Virt;
using Virt.Boot;
using static Iced.Intel.AssemblerRegisters;

var backend = BackendKind.Interpreter;
double seconds = 3;
for (int i = 0; i < args.Length; i++)
{
    if (args[i] == "--seconds" && i + 1 < args.Length)
    {
        seconds = double.Parse(args[++i], CultureInfo.InvariantCulture);
    }
    else if (args[i] == "--backend" && i + 1 < args.Length)
    {
        backend = args[++i].ToLowerInvariant() switch
        {
            "kvm" => BackendKind.Kvm,
            "interpreter" => BackendKind.Interpreter,
            "auto" => BackendKind.Auto,
            var other => throw new ArgumentException($"Unknown backend '{other}'; use kvm, interpreter or auto."),
        };
    }
}

const ulong Load = 0x100000;
var asm = new Assembler(64);
var loop = asm.CreateLabel();
asm.Label(ref loop);
asm.inc(rax);
asm.jmp(loop);
var stream = new MemoryStream();
asm.Assemble(new StreamCodeWriter(stream), Load);
byte[] spin = stream.ToArray();

using var pool = new ResourcePool(new ResourcePoolOptions { Cpus = 1, MemoryBytes = 56UL << 20 });
VirtualMachine Spinner(string name, ResourceRequest request) => VirtualMachine.CreateBuilder()
    .WithName(name)
    .WithBackend(backend)
    .WithMemoryMiB(16)
    .WithResourcePool(pool, request)
    .WithFlatBinary(spin, new GuestAddress(Load))
    .WithEntryPoint(new GuestAddress(Load), StartMode.Long64)
    .Build();

await using var gold = Spinner("gold", new ResourceRequest { CpuShares = 2048 });
await using var silver = Spinner("silver", new ResourceRequest { CpuShares = 1024 });
await using var capped = Spinner("capped", new ResourceRequest { CpuLimit = 0.2 });
try
{
    await using var greedy = Spinner("greedy", new ResourceRequest());
}
catch (ResourceExhaustedException e)
{
    Console.WriteLine($"refused ({e.Resource}): {e.Message}");
}

foreach (var vm in new[] { gold, silver, capped })
{
    await vm.StartAsync();
}

var before = pool.GetUsage().ToDictionary(u => u.Name, u => u.CpuTime);
await Task.Delay(TimeSpan.FromSeconds(seconds));
var after = pool.GetUsage().ToDictionary(u => u.Name);
foreach (var vm in new[] { gold, silver, capped })
{
    await vm.StopAsync();
}

foreach (var (name, usage) in after)
{
    var used = usage.CpuTime - before[name];
    Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
        $"{name,-7} shares {usage.CpuShares,5}  cap {(usage.CpuLimit is double c ? c.ToString("0.0#", CultureInfo.InvariantCulture) : "none"),4}  CPU {used.TotalMilliseconds,7:0} ms ({used.TotalSeconds / seconds:P0} of a core)  throttled {usage.ThrottledTime.TotalMilliseconds:0} ms  preempted {usage.Preemptions}x"));
}

double ratio = (after["gold"].CpuTime - before["gold"]) / (after["silver"].CpuTime - before["silver"]);
Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"gold/silver CPU ratio {ratio:0.00} (shares 2:1)"));
