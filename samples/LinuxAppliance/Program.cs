// LinuxAppliance: boots the guest kit's Debian kernel and initramfs, runs one command inside the
// guest (or a shell on the console with --shell), prints the console output and how the VM stopped.
//
//   bash scripts/get-linux-guest.sh
//   dotnet run -c Release --project samples/LinuxAppliance -- --backend kvm uname -r
//   dotnet run -c Release --project samples/LinuxAppliance -- --shell          (Ctrl-A x leaves, Ctrl-A h helps)
//   dotnet run -c Release --project samples/LinuxAppliance -- --memory 6144 'free -m'
//   dotnet run -c Release --project samples/LinuxAppliance -- --backend interpreter --disk disk.ext4 'mount /dev/vda /mnt && ls /mnt'
//   dotnet run -c Release --project samples/LinuxAppliance -- --backend interpreter --append initcall_debug dmesg
//   dotnet run -c Release --project samples/LinuxAppliance -- --backend interpreter --cpus 4 nproc
//   dotnet run -c Release --project samples/LinuxAppliance -- --backend interpreter --gdb :1234 uname -a   (then: gdb -ex 'target remote :1234')
//   dotnet run -c Release --project samples/LinuxAppliance -- --backend interpreter --net user --forward 8080:80 \
//       'echo hi > /tmp/index.html && httpd -f -p 80 -h /tmp'      (then: curl http://127.0.0.1:8080/index.html)
//
//   dotnet run --project samples/LinuxAppliance -- --backend interpreter --share ./data 'ls -l /mnt/share && date > /mnt/share/stamp'
//
// --share DIR[:ro] shares a host directory through virtio-fs; /init mounts it at /mnt/share (read-only with :ro).
// --net user gives the guest user-mode networking (no root): /init takes an address by DHCP (virt.net=dhcp),
// the gateway 10.0.2.2 is the host's loopback; --forward HOSTPORT:GUESTPORT (repeatable) forwards a host port.
using System.Text;
using Virt;
using Virt.Network;

var backend = BackendKind.Auto;
bool shell = false;
string kit = Path.Combine(FindRoot(), "artifacts", "linux");
var command = new List<string>();
var disks = new List<string>();
string append = "";
int memoryMiB = 256;
int cpus = 1;
string net = "none";
var forwards = new List<UserNetworkTcpForward>();
string? share = null;
System.Net.IPEndPoint? gdb = null;
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
        case "--memory" when i + 1 < args.Length:
            memoryMiB = int.Parse(args[++i], System.Globalization.CultureInfo.InvariantCulture); // MiB of guest RAM
            break;
        case "--net" when i + 1 < args.Length:
            net = args[++i]; // "user" or "none"
            break;
        case "--forward" when i + 1 < args.Length:
            try
            {
                forwards.Add(UserNetworkTcpForward.Parse(args[++i]));
            }
            catch (FormatException e)
            {
                Console.Error.WriteLine(e.Message);
                return 2;
            }

            break;
        case "--gdb" when i + 1 < args.Length:
            gdb = ParseGdbEndPoint(args[++i]); // [HOST]:PORT; the VM waits for GDB's first "continue"
            break;
        case "--cpus" when i + 1 < args.Length:
            cpus = int.Parse(args[++i], System.Globalization.CultureInfo.InvariantCulture); // vCPUs, each on its own host thread
            break;
        case "--disk" when i + 1 < args.Length:
            disks.Add(args[++i]); // /dev/vda, /dev/vdb, ... in this order
            break;
        case "--share" when i + 1 < args.Length:
            share = args[++i]; // DIR or DIR:ro, mounted at /mnt/share
            break;
        default:
            command.AddRange(args[i..]);
            i = args.Length;
            break;
    }
}

string kernel = Path.Combine(kit, "vmlinuz");
string initrd = Path.Combine(kit, "initramfs.cpio");
if (!File.Exists(kernel) || !File.Exists(initrd))
{
    Console.Error.WriteLine($"No guest kit in {kit}. Run: bash scripts/get-linux-guest.sh");
    return 2;
}

if (net is not ("user" or "none") || (forwards.Count > 0 && net != "user"))
{
    Console.Error.WriteLine("--net takes 'user' or 'none'; --forward needs --net user.");
    return 2;
}

// With --shell on a terminal, the console attachment puts the terminal in raw mode (keys, Ctrl-C and escape sequences
// go to the guest) and tells the guest's shell the terminal's size and type.
var terminal = shell ? ConsoleAttachment.Create() : null;
bool attach = terminal is { IsTerminal: true };
string cmdline = ("quiet " + (net == "user" ? "virt.net=dhcp " : "") + append + (attach ? " " + terminal!.GuestKernelParameters : "")).Trim();
if (!shell)
{
    string text = command.Count > 0 ? string.Join(' ', command) : "uname -a";
    cmdline += " virt.cmd=" + Convert.ToBase64String(Encoding.UTF8.GetBytes(text));
}

// The console goes to standard output; a copy is scanned for the /init's "VIRT-EXIT-STATUS=<n>" line so that the
// sample exits with the guest command's status.
var console = new StatusScanner(Console.OpenStandardOutput());
try
{
    var builder = VirtualMachine.CreateBuilder()
        .WithName("appliance")
        .WithBackend(backend)
        .WithMemoryMiB(memoryMiB)
        .WithVcpus(cpus)
        .WithLinuxKernel(kernel)
        .WithInitrd(initrd)
        .WithKernelCommandLine(cmdline)
        .WithSerialConsole(console, shell && !attach ? Console.OpenStandardInput() : null)
        .WithVirtioRng();
    foreach (string disk in disks)
    {
        builder = builder.WithVirtioBlock(disk);
    }

    if (share is not null)
    {
        bool readOnly = share.EndsWith(":ro", StringComparison.Ordinal);
        builder = builder.WithSharedFolder(readOnly ? share[..^3] : share, "share", readOnly, "/mnt/share");
    }

    if (net == "user")
    {
        builder = builder.WithUserNetwork(new UserModeNetworkOptions { TcpForwards = forwards });
        foreach (var f in forwards)
        {
            Console.Error.WriteLine($"forward: {f.HostEndPoint} -> guest port {f.GuestPort}");
        }
    }

    await using var vm = builder.Build();
    Console.Error.WriteLine($"backend: {vm.BackendSelection.Name} ({vm.BackendSelection.Reason}); kernel command line: {vm.KernelCommandLine}");
    using var cts = new CancellationTokenSource();
    Console.CancelKeyPress += (_, e) => { e.Cancel = true; cts.Cancel(); };
    if (attach)
    {
        Console.Error.WriteLine("Ctrl-A x stops the VM, Ctrl-A h prints help.");
    }

    VirtualMachineExit exit;
    await using (attach ? await terminal!.AttachAsync(vm, cts.Token) : null)
    await using (gdb is not null ? await vm.StartGdbServerAsync(gdb, cts.Token) : null)
    {
        if (gdb is not null)
        {
            // GDB's first "continue" starts the VM; until then it can set breakpoints from the first instruction.
            Console.Error.WriteLine($"waiting for GDB: gdb -ex 'target remote {gdb}' (add the kernel's vmlinux for symbols; see docs/debugging.md)");
            try
            {
                exit = await vm.WaitForExitAsync(cts.Token);
            }
            catch (OperationCanceledException)
            {
                exit = await vm.StopAsync(CancellationToken.None);
            }
        }
        else
        {
            exit = await vm.RunAsync(cts.Token);
        }
    }

    Console.Error.WriteLine($"guest stopped: {exit.Description}");
    if (exit.Reason is not (StopReason.PowerOff or StopReason.Reset))
    {
        return 1;
    }

    return console.Status ?? 0;
}
catch (Exception e) when (e is InvalidOperationException or ArgumentException or IOException or Virt.Boot.BootImageException or System.Net.Sockets.SocketException)
{
    Console.Error.WriteLine(e.Message);
    return 2;
}

// "--gdb :1234" listens on the loopback interface only: the stub gives full control of the guest.
static System.Net.IPEndPoint ParseGdbEndPoint(string text)
{
    int colon = text.LastIndexOf(':');
    string host = colon > 0 ? text[..colon] : "127.0.0.1";
    if (!int.TryParse(text[(colon + 1)..], System.Globalization.CultureInfo.InvariantCulture, out int port) || port is < 0 or > 65535)
    {
        throw new ArgumentException($"--gdb takes [HOST]:PORT, e.g. :1234 (got '{text}').");
    }

    return new System.Net.IPEndPoint(System.Net.IPAddress.Parse(host == "localhost" ? "127.0.0.1" : host), port);
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

/// <summary>Passes console output through and remembers the status from a "VIRT-EXIT-STATUS=n" line.</summary>
internal sealed class StatusScanner(Stream inner) : Stream
{
    private const string Marker = "VIRT-EXIT-STATUS=";
    private readonly StringBuilder _line = new();

    /// <summary>The guest command's exit status, once printed.</summary>
    public int? Status { get; private set; }

    public override bool CanRead => false;

    public override bool CanSeek => false;

    public override bool CanWrite => true;

    public override long Length => throw new NotSupportedException();

    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

    public override void Write(byte[] buffer, int offset, int count) => Write(buffer.AsSpan(offset, count));

    public override void Write(ReadOnlySpan<byte> buffer)
    {
        inner.Write(buffer);
        foreach (byte b in buffer)
        {
            if (b == (byte)'\n')
            {
                string line = _line.ToString().TrimEnd('\r');
                if (line.StartsWith(Marker, StringComparison.Ordinal) && int.TryParse(line.AsSpan(Marker.Length), out int status))
                {
                    Status = status;
                }

                _line.Clear();
            }
            else if (_line.Length < 256)
            {
                _line.Append((char)b);
            }
        }
    }

    public override void Flush() => inner.Flush();

    public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();

    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

    public override void SetLength(long value) => throw new NotSupportedException();
}
