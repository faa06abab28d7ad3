// ApplianceNetwork: two Linux appliances on a private virtual network. The "server" VM serves a page
// with busybox httpd; the "client" VM pings it and fetches the page with wget. Both consoles are
// printed with a prefix. Nothing leaves the host: the network is a Virt.Network virtual switch.
//
//   bash scripts/get-linux-guest.sh
//   dotnet run -c Release --project samples/ApplianceNetwork -- --backend interpreter
//   dotnet run -c Release --project samples/ApplianceNetwork -- --append cryptomgr.notests   (extra kernel parameters:
//       here, skip the kernel's crypto self-tests, a good part of a boot on the interpreter)
using System.Text;
using Virt;
using Virt.Network;

var backend = BackendKind.Auto;
string kit = Path.Combine(FindRoot(), "artifacts", "linux");
string append = "";
for (int i = 0; i < args.Length; i++)
{
    switch (args[i])
    {
        case "--backend" when i + 1 < args.Length:
            backend = Enum.Parse<BackendKind>(args[++i], ignoreCase: true);
            break;
        case "--kit" when i + 1 < args.Length:
            kit = args[++i];
            break;
        case "--append" when i + 1 < args.Length:
            append = " " + args[++i]; // extra kernel parameters
            break;
        default:
            Console.Error.WriteLine("usage: ApplianceNetwork [--backend auto|kvm|interpreter] [--kit DIR] [--append PARAMETERS]");
            return 2;
    }
}

string kernel = Path.Combine(kit, "vmlinuz");
string initrd = Path.Combine(kit, "initramfs.cpio");
if (!File.Exists(kernel) || !File.Exists(initrd))
{
    Console.Error.WriteLine($"No guest kit in {kit}. Run: bash scripts/get-linux-guest.sh");
    return 2;
}

var networks = new VirtualNetworkHost();
var lan = networks.Create("lan");
lan.Start();

// The server brings its address up only after httpd listens (busybox httpd binds before it returns), so the
// client's first answered ping means the page can be fetched: no race between the two boots.
const string serverCommand =
    "mkdir -p /www && echo 'hello from the server appliance' > /www/index.html && httpd -p 80 -h /www && "
    + "ip link set eth0 up && ip addr add 10.0.3.1/24 dev eth0 && echo server ready && sleep 3600";
const string clientCommand =
    "ip link set eth0 up && ip addr add 10.0.3.2/24 dev eth0 && "
    + "i=0; until ping -c 1 -W 1 10.0.3.1 >/dev/null; do i=$((i+1)); [ $i -lt 600 ] || exit 9; done; "
    + "ping -c 3 10.0.3.1 && wget -qO- http://10.0.3.1/index.html";

try
{
    await using var server = Appliance("server", serverCommand, MacAddress.Parse("02:00:00:00:03:01"));
    await using var client = Appliance("client", clientCommand, MacAddress.Parse("02:00:00:00:03:02"));
    Console.Error.WriteLine($"backend: {server.BackendSelection.Name} ({server.BackendSelection.Reason})");

    using var cts = new CancellationTokenSource();
    Console.CancelKeyPress += (_, e) => { e.Cancel = true; cts.Cancel(); };
    await server.StartAsync(cts.Token);
    var clientExit = await client.RunAsync(cts.Token);   // the client powers off when its command is done
    var serverExit = await server.StopAsync(cts.Token);  // the server would serve for an hour: stop it
    Console.Error.WriteLine($"client: {clientExit.Description}; server: {serverExit.Description}");
    Console.Error.WriteLine($"network: {lan.FramesForwarded} frames forwarded, {lan.FramesFlooded} flooded, {lan.FramesDropped} dropped");
    return clientExit.Reason == StopReason.PowerOff ? 0 : 1;
}
catch (Exception e) when (e is InvalidOperationException or ArgumentException or IOException or Virt.Boot.BootImageException)
{
    Console.Error.WriteLine(e.Message);
    return 2;
}

VirtualMachine Appliance(string name, string command, MacAddress mac) =>
    VirtualMachine.CreateBuilder()
        .WithName(name)
        .WithBackend(backend)
        .WithMemoryMiB(256)
        .WithLinuxKernel(kernel)
        .WithInitrd(initrd)
        .WithKernelCommandLine("quiet" + append + " virt.cmd=" + Convert.ToBase64String(Encoding.UTF8.GetBytes(command)))
        .WithSerialConsole(new PrefixWriter(name))
        .WithVirtioNet(lan, mac)
        .Build();

static string FindRoot()
{
    var dir = new DirectoryInfo(AppContext.BaseDirectory);
    while (dir is not null && !File.Exists(Path.Combine(dir.FullName, "Virt.Sdk.sln")))
    {
        dir = dir.Parent;
    }

    return dir?.FullName ?? Directory.GetCurrentDirectory();
}

/// <summary>Writes each console line of one VM to standard output, prefixed with the VM's name.</summary>
internal sealed class PrefixWriter(string name) : TextWriter
{
    private readonly StringBuilder _line = new();

    public override Encoding Encoding => Encoding.UTF8;

    public override void Write(char value)
    {
        if (value == '\n')
        {
            Console.Out.WriteLine($"[{name}] {_line.ToString().TrimEnd('\r')}");
            _line.Clear();
        }
        else
        {
            _line.Append(value);
        }
    }
}
