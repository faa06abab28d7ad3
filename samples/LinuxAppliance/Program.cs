// LinuxAppliance: boots the guest kit's Debian kernel and initramfs, runs one command inside the
// guest (or a shell on the console with --shell), prints the console output and how the VM stopped.
//
//   bash scripts/get-linux-guest.sh
//   dotnet run --project samples/LinuxAppliance -- --backend kvm uname -r
//   dotnet run --project samples/LinuxAppliance -- --backend kvm --shell
//   dotnet run --project samples/LinuxAppliance -- --backend interpreter --disk disk.ext4 'mount /dev/vda /mnt && ls /mnt'
//   dotnet run --project samples/LinuxAppliance -- --backend interpreter --append initcall_debug dmesg
using System.Text;
using Virt;

var backend = BackendKind.Auto;
bool shell = false;
string kit = Path.Combine(FindRoot(), "artifacts", "linux");
var command = new List<string>();
var disks = new List<string>();
string append = "";
for (int i = 0; i < args.Length; i++)
{
    switch (args[i])
    {
        case "--backend" when i + 1 < args.Length:
            backend = Enum.Parse<BackendKind>(args[++i], ignoreCase: true);
            break;
        case "--shell":
            shell = true;
            break;
        case "--kit" when i + 1 < args.Length:
            kit = args[++i];
            break;
        case "--append" when i + 1 < args.Length:
            append = args[++i]; // extra kernel parameters, e.g. "initcall_debug" or "reboot=k"
            break;
        case "--disk" when i + 1 < args.Length:
            disks.Add(args[++i]); // /dev/vda, /dev/vdb, ... in this order
            break;
        default:
            command.AddRange(args[i..]);
            i = args.Length;
            break;
    }
}

string kernel = Path.Combine(kit, "vmlinuz");
string initrd = Path.Combine(kit, "initramfs.cpio.gz");
if (!File.Exists(kernel) || !File.Exists(initrd))
{
    Console.Error.WriteLine($"No guest kit in {kit}. Run: bash scripts/get-linux-guest.sh");
    return 2;
}

string cmdline = ("quiet " + append).Trim();
if (!shell)
{
    string text = command.Count > 0 ? string.Join(' ', command) : "uname -a";
    cmdline += " virt.cmd=" + Convert.ToBase64String(Encoding.UTF8.GetBytes(text));
}

var console = Console.OpenStandardOutput();
try
{
    var builder = VirtualMachine.CreateBuilder()
        .WithName("appliance")
        .WithBackend(backend)
        .WithMemoryMiB(256)
        .WithLinuxKernel(kernel)
        .WithInitrd(initrd)
        .WithKernelCommandLine(cmdline)
        .WithSerialConsole(console, shell ? Console.OpenStandardInput() : null)
        .WithVirtioRng();
    foreach (string disk in disks)
    {
        builder = builder.WithVirtioBlock(disk);
    }

    await using var vm = builder.Build();
    Console.Error.WriteLine($"backend: {vm.BackendSelection.Name} ({vm.BackendSelection.Reason}); kernel command line: {vm.KernelCommandLine}");
    using var cts = new CancellationTokenSource();
    Console.CancelKeyPress += (_, e) => { e.Cancel = true; cts.Cancel(); };
    var exit = await vm.RunAsync(cts.Token);
    Console.Error.WriteLine($"guest stopped: {exit.Description}");
    return exit.Reason is StopReason.PowerOff or StopReason.Reset ? 0 : 1;
}
catch (Exception e) when (e is InvalidOperationException or ArgumentException or IOException or Virt.Boot.BootImageException)
{
    Console.Error.WriteLine(e.Message);
    return 2;
}

static string FindRoot()
{
    var dir = new DirectoryInfo(AppContext.BaseDirectory);
    while (dir is not null && !File.Exists(Path.Combine(dir.FullName, "Virt.Sdk.sln")))
    {
        dir = dir.Parent;
    }

    return dir?.FullName ?? Directory.GetCurrentDirectory();
}
