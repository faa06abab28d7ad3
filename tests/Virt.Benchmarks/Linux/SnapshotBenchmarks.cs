using System.Diagnostics;
using System.Text;
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Engines;
using Virt.Testing;

namespace Virt.Benchmarks.Linux;

/// <summary>
/// A 256 MiB guest-kit appliance booted once on the interpreter to a ready shell and saved (in the global set-up,
/// which also reports the boot time); then: restoring it to its first instruction (paused), restoring it to the output
/// of a command, and saving it. The baseline, in the same run, is building (and disposing) the same VM from its kernel
/// and initramfs without running it: the least a VM costs without a snapshot. Needs scripts/get-linux-guest.sh.
/// </summary>
[SimpleJob(RunStrategy.Monitoring, launchCount: 1, warmupCount: 2, iterationCount: 15)]
public class SnapshotBenchmarks
{
    private readonly string _dir = Directory.CreateTempSubdirectory("virt-snapshot-bench-").FullName;
    private string _kernel = "";
    private string _initrd = "";
    private string _snapshot = "";
    private VirtualMachine? _paused;
    private int _saves;

    [GlobalSetup]
    public void Setup()
    {
        _kernel = Path.Combine(RepositoryPaths.LinuxGuestKit, "vmlinuz");
        _initrd = Path.Combine(RepositoryPaths.LinuxGuestKit, "initramfs.cpio");
        if (!File.Exists(_kernel) || !File.Exists(_initrd))
        {
            throw new InvalidOperationException("The guest kit is missing; run scripts/get-linux-guest.sh.");
        }

        _snapshot = Path.Combine(_dir, "appliance.snap");
        var clock = Stopwatch.StartNew();
        BootAndSaveAsync(_kernel, _initrd, _snapshot).GetAwaiter().GetResult();
        Console.WriteLine($"// boot to a ready shell and save: {clock.Elapsed.TotalSeconds:F1} s; snapshot {new FileInfo(_snapshot).Length >> 20} MiB long");
    }

    /// <summary>Boots the guest kit to a shell that has answered a command, pauses and saves it.</summary>
    public static async Task BootAndSaveAsync(string kernel, string initrd, string snapshot)
    {
        var console = new MarkerStream("READY-42");
        await using var vm = Appliance(kernel, initrd, console).Build();
        await vm.StartAsync().ConfigureAwait(false);
        await console.WaitForAsync("VIRT-INIT-READY", CancellationToken.None).WaitAsync(TimeSpan.FromMinutes(5)).ConfigureAwait(false);
        await vm.WriteToSerialConsoleAsync("echo READY-$((6*7))\n"u8.ToArray()).ConfigureAwait(false);
        await console.Seen.Task.WaitAsync(TimeSpan.FromMinutes(1)).ConfigureAwait(false);
        await vm.PauseAsync().ConfigureAwait(false);
        await vm.SaveSnapshotAsync(snapshot).ConfigureAwait(false);
    }

    private static VirtualMachineBuilder Appliance(string kernel, string initrd, Stream console) => VirtualMachine.CreateBuilder()
        .WithInterpreter()
        .WithMemoryMiB(256)
        .WithLinuxKernel(kernel)
        .WithInitrd(initrd)
        .WithKernelCommandLine("quiet")
        .WithSerialConsole(console);

    [GlobalCleanup]
    public void Cleanup()
    {
        _paused?.DisposeAsync().AsTask().GetAwaiter().GetResult();
        Directory.Delete(_dir, recursive: true);
    }

    [Benchmark(Baseline = true, Description = "build the VM from kernel + initramfs (not run)")]
    public async Task Build()
    {
        await using var vm = Appliance(_kernel, _initrd, Stream.Null).Build();
        await Task.CompletedTask.ConfigureAwait(false);
    }

    [Benchmark(Description = "restore to the first instruction (paused)")]
    public async Task Restore()
    {
        await using var vm = await VirtualMachine.RestoreAsync(_snapshot, b => b.WithSerialConsole(Stream.Null)).ConfigureAwait(false);
    }

    [Benchmark(Description = "restore to a command's output")]
    public async Task RestoreToAnswer()
    {
        var console = new MarkerStream("ANSWER-42", keep: false);
        await using var vm = await VirtualMachine.RestoreAsync(_snapshot, b => b.WithSerialConsole(console)).ConfigureAwait(false);
        await vm.ResumeAsync().ConfigureAwait(false);
        await vm.WriteToSerialConsoleAsync(Encoding.ASCII.GetBytes("echo ANSWER-$((6*7))\n")).ConfigureAwait(false);
        await console.Seen.Task.WaitAsync(TimeSpan.FromMinutes(1)).ConfigureAwait(false);
    }

    [IterationSetup(Target = nameof(Save))]
    public void RestoreForSave()
    {
        _paused?.DisposeAsync().AsTask().GetAwaiter().GetResult();
        _paused = VirtualMachine.RestoreAsync(_snapshot, b => b.WithSerialConsole(Stream.Null)).GetAwaiter().GetResult();
    }

    [Benchmark(Description = "save (256 MiB, paused)")]
    public async Task Save()
    {
        string path = Path.Combine(_dir, $"save-{_saves++ % 2}.snap");
        await _paused!.SaveSnapshotAsync(path).ConfigureAwait(false);
    }
}

/// <summary>
/// Resident memory of one restored appliance against ten clones of the same snapshot, each resumed and answering a
/// command (so each has run and written its own pages): <c>Virt.Benchmarks clones</c>.
/// </summary>
public static class CloneMemory
{
    public static async Task RunAsync()
    {
        string kernel = Path.Combine(RepositoryPaths.LinuxGuestKit, "vmlinuz");
        string initrd = Path.Combine(RepositoryPaths.LinuxGuestKit, "initramfs.cpio");
        string dir = Directory.CreateTempSubdirectory("virt-clones-").FullName;
        try
        {
            string snapshot = Path.Combine(dir, "appliance.snap");
            var clock = Stopwatch.StartNew();
            await SnapshotBenchmarks.BootAndSaveAsync(kernel, initrd, snapshot).ConfigureAwait(false);
            Console.WriteLine($"boot and save: {clock.Elapsed.TotalSeconds:F1} s");
            long before = Rss();
            var clones = new List<VirtualMachine>();
            for (int n = 1; n <= 10; n++)
            {
                var console = new MarkerStream($"CLONE-{n}-UP", keep: false);
                var vm = await VirtualMachine.RestoreAsync(snapshot, b => b.WithSerialConsole(console)).ConfigureAwait(false);
                clones.Add(vm);
                await vm.ResumeAsync().ConfigureAwait(false);
                await vm.WriteToSerialConsoleAsync(Encoding.ASCII.GetBytes($"echo CLONE-{n}-U''P\n")).ConfigureAwait(false);
                await console.Seen.Task.WaitAsync(TimeSpan.FromMinutes(1)).ConfigureAwait(false);
                await vm.PauseAsync().ConfigureAwait(false);
                if (n is 1 or 10)
                {
                    Console.WriteLine($"{n} running clone(s): process RSS grew by {(Rss() - before) >> 20} MiB (guest RAM 256 MiB each)");
                }
            }

            foreach (var vm in clones)
            {
                await vm.DisposeAsync().ConfigureAwait(false);
            }
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    private static long Rss()
    {
        GC.Collect();
        GC.WaitForPendingFinalizers();
        using var p = Process.GetCurrentProcess();
        p.Refresh();
        return p.WorkingSet64;
    }
}
