using System.Diagnostics;
using System.Text;
using Virt.Network;
using Virt.Testing;
using Xunit;

[assembly: AssemblyFixture(typeof(Virt.Testing.DeleteRunDirectories))]

namespace Virt.Sdk.Tests;

/// <summary>
/// The Linux appliance most Linux tests start from: the guest kit on the interpreter (256 MiB, interactive shell on
/// the serial console), an ext4 virtio disk mounted at /mnt with a file written to it, and a virtio-net NIC with eth0
/// up at 10.0.14.15/24. It is booted once per test process, the first time a test asks for it, paused and saved; every
/// test then restores its own clone (its own copy of the disk, its own network) in milliseconds.
/// </summary>
internal sealed class BootedAppliance
{
    /// <summary>The NIC's MAC address (a restore must give the same one).</summary>
    public static readonly MacAddress Mac = MacAddress.Parse("02:00:00:00:0e:0f");

    /// <summary>The address eth0 has in the appliance.</summary>
    public const string Address = "10.0.14.15";

    /// <summary>The content of /mnt/before.txt, written by the guest before the snapshot.</summary>
    public const string WrittenBeforeSnapshot = "written-before-the-snapshot";

    /// <summary>The content of /mnt/hello.txt, put on the disk by the host.</summary>
    public const string HostFile = "hello from the host\n";

    /// <summary>/mnt/payload.bin, put on the disk by the host: 200,000 bytes of seeded random data.</summary>
    public static byte[] Payload()
    {
        var payload = new byte[200_000];
        new Random(1234).NextBytes(payload);
        return payload;
    }

    /// <summary>What is typed into the shell right after boot; ends by printing <see cref="ReadyMarker"/>.</summary>
    public const string PrepareCommand =
        "mount -t ext4 /dev/vda /mnt && echo " + WrittenBeforeSnapshot + " > /mnt/before.txt && sync && "
        + "ip link set eth0 up && ip addr add " + Address + "/24 dev eth0 && echo APPLIANCE-READY-$((6*7))\n";

    /// <summary>The line <see cref="PrepareCommand"/> prints when it succeeded (the typed command does not contain it).</summary>
    public const string ReadyMarker = "APPLIANCE-READY-42";

    private static readonly Lazy<Task<BootedAppliance>> Shared = new(BootAsync, LazyThreadSafetyMode.ExecutionAndPublication);

    private BootedAppliance(string directory, TimeSpan bootTime)
    {
        Directory = directory;
        BootTime = bootTime;
    }

    /// <summary>The folder holding the snapshot and the disk image; deleted when every test has run (<see cref="RunDirectories"/>).</summary>
    public string Directory { get; }

    /// <summary>The snapshot file.</summary>
    public string SnapshotPath => Path.Combine(Directory, "appliance.snap");

    /// <summary>The disk image as it was when the snapshot was saved; each clone runs on its own copy.</summary>
    public string DiskAtSnapshot => Path.Combine(Directory, "disk-at-snapshot.ext4");

    /// <summary>How long the one boot to a ready shell took.</summary>
    public TimeSpan BootTime { get; }

    /// <summary>
    /// The appliance, booted by the first caller (later and concurrent callers wait for that one boot); skips the test
    /// when the guest kit is missing.
    /// </summary>
    public static Task<BootedAppliance> GetAsync()
    {
        Assert.SkipUnless(File.Exists(LinuxKit.Kernel) && File.Exists(LinuxKit.Initrd), "The guest kit is missing; run scripts/get-linux-guest.sh.");
        return Shared.Value;
    }

    /// <summary>Makes the appliance's disk image in <paramref name="directory"/>: hello.txt and payload.bin on ext4.</summary>
    public static string CreateDisk(string directory)
    {
        string tree = System.IO.Directory.CreateDirectory(Path.Combine(directory, "tree")).FullName;
        File.WriteAllText(Path.Combine(tree, "hello.txt"), HostFile);
        File.WriteAllBytes(Path.Combine(tree, "payload.bin"), Payload());
        string image = Path.Combine(directory, "disk.ext4");
        HostTools.Run("mkfs.ext4", $"-q -F -L virtdisk -d {tree} {image} 32M");
        return image;
    }

    private static async Task<BootedAppliance> BootAsync()
    {
        // Not tied to one test's cancellation: every Linux test in the run shares this boot.
        string directory = RunDirectories.Create("virt-appliance-");

        string image = CreateDisk(directory);
        var network = new VirtualNetwork("appliance-boot");
        network.Start();
        var console = new MarkerStream(ReadyMarker);
        var clock = Stopwatch.StartNew();
        await using var vm = LinuxKit.Interactive(console).WithVirtioBlock(image).WithVirtioNet(network, Mac).Build();
        using var timeout = new CancellationTokenSource(TimeSpan.FromMinutes(8));
        await vm.StartAsync(timeout.Token);
        var exited = vm.WaitForExitAsync(timeout.Token);
        await WaitOrExplainAsync(console.WaitForAsync("VIRT-INIT-READY", timeout.Token), exited, console, "VIRT-INIT-READY");
        await vm.WriteToSerialConsoleAsync(Encoding.ASCII.GetBytes(PrepareCommand), timeout.Token);
        await WaitOrExplainAsync(console.Seen.Task.WaitAsync(timeout.Token), exited, console, ReadyMarker);
        var bootTime = clock.Elapsed;
        await vm.PauseAsync(timeout.Token);
        var appliance = new BootedAppliance(directory, bootTime);
        await vm.SaveSnapshotAsync(appliance.SnapshotPath, timeout.Token);
        await vm.DisposeAsync();
        File.Copy(image, appliance.DiskAtSnapshot);
        return appliance;
    }

    /// <summary>Waits for <paramref name="ready"/>; a guest that stops first, or a timeout, fails with the console text.</summary>
    internal static async Task WaitOrExplainAsync(Task ready, Task<VirtualMachineExit> exited, MarkerStream console, string what)
    {
        try
        {
            await Task.WhenAny(ready, exited);
        }
        catch (OperationCanceledException)
        {
        }

        if (ready.IsCompletedSuccessfully)
        {
            return;
        }

        string why = exited.IsCompletedSuccessfully ? $"the guest stopped ({exited.Result.Description})" : "timed out";
        throw new InvalidOperationException($"The appliance never printed {what}: {why}.\n{console.Text}");
    }
}

/// <summary>
/// One test's own appliance at a shell prompt, in the state <see cref="BootedAppliance"/> describes. On the interpreter
/// it is a clone restored from the shared snapshot; on KVM (hosts with hardware virtualization) it is booted and
/// prepared the same way, since an interpreter snapshot with an interrupt controller restores only on the interpreter.
/// </summary>
internal sealed class ApplianceShell : IAsyncDisposable
{
    private readonly TempDirectory _dir;

    private ApplianceShell(VirtualMachine vm, MarkerStream console, string disk, TempDirectory dir)
    {
        Vm = vm;
        Console = console;
        Disk = disk;
        _dir = dir;
    }

    /// <summary>The VM, running.</summary>
    public VirtualMachine Vm { get; }

    /// <summary>Everything the guest printed since this shell was started (the snapshot's boot output is not in it).</summary>
    public MarkerStream Console { get; }

    /// <summary>This shell's own disk image (vda), mounted at /mnt in the guest.</summary>
    public string Disk { get; }

    /// <summary>The console text without carriage returns.</summary>
    public string Text => Console.Text.Replace("\r", "", StringComparison.Ordinal);

    /// <summary>
    /// Starts a shell on <paramref name="backend"/> ("interpreter" or "kvm"). The NIC goes to <paramref name="nic"/>
    /// (a network port, TAP) or, by default, to a private network of its own.
    /// </summary>
    public static async Task<ApplianceShell> StartAsync(string backend, INetworkBackend? nic = null, string? name = null, CancellationToken cancellationToken = default)
    {
        var dir = new TempDirectory();
        try
        {
            var console = new MarkerStream(BootedAppliance.ReadyMarker);
            string disk = Path.Combine(dir.Path, "disk.ext4");
            Func<VirtualMachineBuilder, VirtualMachineBuilder> hostParts = b =>
            {
                b = b.WithSerialConsole(console).WithVirtioBlock(disk);
                return nic is null ? b.WithVirtioNet(new VirtualNetwork("appliance-" + Guid.NewGuid().ToString("N")), BootedAppliance.Mac) : b.WithVirtioNet(nic, BootedAppliance.Mac);
            };

            VirtualMachine vm;
            if (backend == "kvm")
            {
                Assert.SkipUnless(File.Exists(LinuxKit.Kernel) && File.Exists(LinuxKit.Initrd), "The guest kit is missing; run scripts/get-linux-guest.sh.");
                HostRequirements.RequireKvm();
                Assert.SkipUnless(new Virt.Cpu.Kvm.KvmHypervisor().GetAvailability().SlowKernelMode is null,
                    "This host's KVM has no hardware virtualization (no vmx/svm flag); a stock kernel does not run on it (see docs/linux-guests.md). The interpreter variant of this test runs instead.");
                File.Move(BootedAppliance.CreateDisk(dir.Path), disk, overwrite: true);
                var builder = hostParts(VirtualMachine.CreateBuilder().WithKvm().WithMemoryMiB(256)
                    .WithLinuxKernel(LinuxKit.Kernel).WithInitrd(LinuxKit.Initrd).WithKernelCommandLine("quiet"));
                if (name is not null)
                {
                    builder = builder.WithName(name);
                }

                vm = builder.Build();
                using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
                timeout.CancelAfter(TimeSpan.FromMinutes(5));
                await vm.StartAsync(timeout.Token);
                var exited = vm.WaitForExitAsync(timeout.Token);
                await BootedAppliance.WaitOrExplainAsync(console.WaitForAsync("VIRT-INIT-READY", timeout.Token), exited, console, "VIRT-INIT-READY");
                await vm.WriteToSerialConsoleAsync(Encoding.ASCII.GetBytes(BootedAppliance.PrepareCommand), timeout.Token);
                await BootedAppliance.WaitOrExplainAsync(console.Seen.Task.WaitAsync(timeout.Token), exited, console, BootedAppliance.ReadyMarker);
            }
            else
            {
                var appliance = await BootedAppliance.GetAsync();
                File.Copy(appliance.DiskAtSnapshot, disk);
                vm = await VirtualMachine.RestoreAsync(appliance.SnapshotPath, b => hostParts(b.WithInterpreter()), cancellationToken);
                await vm.ResumeAsync(cancellationToken);
            }

            return new ApplianceShell(vm, console, disk, dir);
        }
        catch
        {
            dir.Dispose();
            throw;
        }
    }

    /// <summary>Types <paramref name="line"/> (a newline is added) into the guest's shell.</summary>
    public Task TypeAsync(string line, CancellationToken cancellationToken) =>
        Vm.WriteToSerialConsoleAsync(Encoding.ASCII.GetBytes(line + "\n"), cancellationToken);

    /// <summary>
    /// Runs <paramref name="command"/> in the shell as the guest kit's /init runs a <c>virt.cmd</c> (it prints
    /// VIRT-EXIT-STATUS=N after it), then leaves the shell, so /init powers the machine off; returns the exit and the
    /// console text.
    /// </summary>
    public async Task<(VirtualMachineExit Exit, string Output)> RunToExitAsync(string command, CancellationToken cancellationToken)
    {
        await TypeAsync($"sh -c '{command.Replace("'", "'\\''", StringComparison.Ordinal)}'; echo VIRT-EXIT-STATUS=$?; exit", cancellationToken);
        var exit = await Vm.WaitForExitAsync(cancellationToken);
        return (exit, Text);
    }

    /// <inheritdoc/>
    public async ValueTask DisposeAsync()
    {
        await Vm.DisposeAsync();
        _dir.Dispose();
    }
}
