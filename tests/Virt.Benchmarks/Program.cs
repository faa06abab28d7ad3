using BenchmarkDotNet.Running;

// Run with: dotnet run -c Release --project tests/Virt.Benchmarks -- --filter '*'
// One interpreter run in a fresh process: dotnet run -c Release --project tests/Virt.Benchmarks -- fresh loop [runs]
if (args is ["fresh", string workload, ..])
{
    Virt.Benchmarks.Interpreter.FreshProcessRun.Run(workload, args.Length > 2 ? int.Parse(args[2], System.Globalization.CultureInfo.InvariantCulture) : 1);
    return;
}

// The same four workloads on qemu-system-x86_64 -accel tcg (the peer column): dotnet run -c Release --project tests/Virt.Benchmarks -- qemu-tcg [runs] [thp: off (default) | on]
if (args is ["qemu-tcg", ..])
{
    Virt.Benchmarks.Interpreter.QemuPeer.Run(
        args.Length > 1 ? int.Parse(args[1], System.Globalization.CultureInfo.InvariantCulture) : 3,
        thp: args.Length > 2 && args[2] == "on");
    return;
}

// Resident memory of ten clones of one snapshot: dotnet run -c Release --project tests/Virt.Benchmarks -- clones
if (args is ["clones"])
{
    await Virt.Benchmarks.Linux.CloneMemory.RunAsync();
    return;
}

// Linux boot to /init on the interpreter with 1, 2 and 4 vCPUs (or only the count given):
// dotnet run -c Release --project tests/Virt.Benchmarks -- smp-boot [runs] [vcpus]
if (args is ["smp-boot", ..])
{
    await Virt.Benchmarks.Linux.SmpBootTime.RunAsync(
        args.Length > 1 ? int.Parse(args[1], System.Globalization.CultureInfo.InvariantCulture) : 1,
        args.Length > 2 ? int.Parse(args[2], System.Globalization.CultureInfo.InvariantCulture) : 0);
    return;
}

// The same boot on qemu-system-x86_64 -accel tcg, one process per boot, wall clock and the process's CPU seconds:
// dotnet run -c Release --project tests/Virt.Benchmarks -- qemu-boot [runs] [vcpus] [thp: off (default) | on]
if (args is ["qemu-boot", ..])
{
    Virt.Benchmarks.Linux.QemuBootTime.Run(
        args.Length > 1 ? int.Parse(args[1], System.Globalization.CultureInfo.InvariantCulture) : 3,
        args.Length > 2 ? int.Parse(args[2], System.Globalization.CultureInfo.InvariantCulture) : 1,
        thp: args.Length > 3 && args[3] == "on");
    return;
}

// Boots to /init with the bzImage decompressed in the guest and on the host, alternately:
// dotnet run -c Release --project tests/Virt.Benchmarks -- kernel-load [runs]
if (args is ["kernel-load", ..])
{
    await Virt.Benchmarks.Linux.KernelLoadCost.RunAsync(args.Length > 1 ? int.Parse(args[1], System.Globalization.CultureInfo.InvariantCulture) : 3);
    return;
}

// Live migration of a busy appliance through a loopback socket, cold then warm: dotnet run -c Release --project tests/Virt.Benchmarks -- migrate [runs]
if (args is ["migrate", ..])
{
    await Virt.Benchmarks.Linux.MigrationDowntime.RunAsync(args.Length > 1 ? int.Parse(args[1], System.Globalization.CultureInfo.InvariantCulture) : 3);
    return;
}

// VMs sharing a resource pool: share ratios, a quiet VM's latency beside busy ones, admissions per second:
// dotnet run -c Release --project tests/Virt.Benchmarks -- pool [requests]
if (args is ["pool", ..])
{
    await Virt.Benchmarks.Sdk.PoolContention.RunAsync(args.Length > 1 ? int.Parse(args[1], System.Globalization.CultureInfo.InvariantCulture) : 1000);
    return;
}

// One transfer through the user-mode network in a fresh process (frame-level guest, or with "linux" a Linux guest on
// the interpreter fetching by wget; with "offload" the frame-level guest uses checksum and segmentation offloads):
// dotnet run -c Release --project tests/Virt.Benchmarks -- net-fresh [linux|offload] [MiB] [nooffload]
// The user network's transfers repeated in one warm process, against loopback round by round:
// dotnet run -c Release --project tests/Virt.Benchmarks -- net-rounds [MiB] [rounds]
if (args is ["net-rounds", ..])
{
    await Virt.Benchmarks.Network.UserNetworkSteady.RunAsync(
        args.Length > 1 ? int.Parse(args[1], System.Globalization.CultureInfo.InvariantCulture) : 4,
        args.Length > 2 ? int.Parse(args[2], System.Globalization.CultureInfo.InvariantCulture) : 11);
    return;
}

if (args is ["net-fresh", ..])
{
    bool linux = args.Length > 1 && args[1] == "linux";
    bool offload = args.Length > 1 && args[1] == "offload";
    int first = linux || offload ? 2 : 1;
    int mebibytes = args.Length > first ? int.Parse(args[first], System.Globalization.CultureInfo.InvariantCulture) : (linux ? 1 : 4);
    await (linux ? Virt.Benchmarks.Network.UserNetworkLinux.RunAsync(mebibytes, !args.Contains("nooffload")) : Virt.Benchmarks.Network.UserNetworkFresh.RunAsync(mebibytes, offload));
    return;
}

// First writes into a fresh qcow2 overlay, standard against extended L2 entries (subclusters):
// dotnet run -c Release --project tests/Virt.Benchmarks -- qcow2-cow [writes] [rounds]
if (args is ["qcow2-cow", ..])
{
    await Virt.Benchmarks.Virtio.OverlayCow.RunAsync(
        args.Length > 1 ? int.Parse(args[1], System.Globalization.CultureInfo.InvariantCulture) : 2048,
        args.Length > 2 ? int.Parse(args[2], System.Globalization.CultureInfo.InvariantCulture) : 5);
    return;
}

// Guest downtime of VM grain moves between two silos, save/restore and live, resumed at the grain's arrival or the
// state's: dotnet run -c Release --project tests/Virt.Benchmarks -- orleans-move [moves]
if (args is ["orleans-move", ..])
{
    await Virt.Benchmarks.Orleans.MoveDowntime.RunAsync(args.Length > 1 ? int.Parse(args[1], System.Globalization.CultureInfo.InvariantCulture) : 60);
    return;
}

// Sandbox calls per second through a two-silo cluster against one pool in this process, and a fresh process's first
// call each way: dotnet run -c Release --project tests/Virt.Benchmarks -- sandbox-cluster [calls] [in-flight]
if (args is ["sandbox-cluster", ..])
{
    await Virt.Benchmarks.Orleans.SandboxClusterThroughput.RunAsync(
        args.Length > 1 ? int.Parse(args[1], System.Globalization.CultureInfo.InvariantCulture) : 2000,
        args.Length > 2 ? int.Parse(args[2], System.Globalization.CultureInfo.InvariantCulture) : 8);
    return;
}

// 4 KiB random reads and writes on tmpfs in a fresh process: host, device served inline, device served by the worker:
// dotnet run -c Release --project tests/Virt.Benchmarks -- blk-fresh [requests] [rounds] [directory] [bytes] [depth] [cases]
// (directory: /dev/shm by default; one on a disk file system measures page-cache hits served with RWF_NOWAIT;
// bytes: 4096 by default at random offsets, any other size sequentially, e.g. 1048576; depth: requests the driver
// makes available per notification, 1 by default; cases: all by default, or a format, an operation or both, e.g.
// raw, read, qcow2-write)
if (args is ["blk-fresh", ..])
{
    await Virt.Benchmarks.Virtio.BlockFresh.RunAsync(
        args.Length > 1 ? int.Parse(args[1], System.Globalization.CultureInfo.InvariantCulture) : 20000,
        args.Length > 2 ? int.Parse(args[2], System.Globalization.CultureInfo.InvariantCulture) : 9,
        args.Length > 3 ? args[3] : "/dev/shm",
        args.Length > 4 ? int.Parse(args[4], System.Globalization.CultureInfo.InvariantCulture) : 4096,
        args.Length > 5 ? int.Parse(args[5], System.Globalization.CultureInfo.InvariantCulture) : 1,
        args.Length > 6 ? args[6] : "all");
    return;
}

BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args);

/// <summary>Entry point type for the benchmark switcher.</summary>
internal sealed partial class Program;
