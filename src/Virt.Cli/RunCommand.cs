using System.CommandLine;
using System.Diagnostics.CodeAnalysis;
using System.Globalization;
using System.Net;
using System.Text;
using Virt.Boot;
using Virt.Network;
using Virt.Storage;

namespace Virt.Cli;

/// <summary>
/// <c>virt run</c>: boots a Linux guest (the guest kit's kernel and initramfs unless others are given). A command after
/// <c>--</c> runs in the guest through the kit's /init (<c>virt.cmd=</c>) and its exit status becomes the tool's; without
/// one the console is attached to this terminal (Ctrl-A x stops the VM).
/// </summary>
internal static class RunCommand
{
    public static Command Create()
    {
        var kernel = new Option<string?>("--kernel") { Description = "Linux kernel (bzImage). Default: the guest kit's vmlinuz." };
        var initrd = new Option<string?>("--initrd") { Description = "Initial RAM disk. Default: the guest kit's initramfs when --kernel is not given." };
        var append = new Option<string?>("--append") { Description = "Extra kernel parameters, e.g. \"initcall_debug\"." };
        var disks = new Option<string[]>("--disk") { Description = "A disk image (raw, qcow2 or overlay) as /dev/vda, /dev/vdb, ... in order; PATH:ro attaches it read-only.", AllowMultipleArgumentsPerToken = false, Arity = ArgumentArity.ZeroOrMore };
        var net = new Option<string>("--net") { Description = "Networking: none, or user (user-mode networking, no rights needed; the guest takes 10.0.2.15 by DHCP).", DefaultValueFactory = _ => "none" };
        net.AcceptOnlyFromAmong("none", "user");
        var forwards = new Option<string[]>("--forward") { Description = "HOSTPORT:GUESTPORT: forward a host TCP port to the guest (needs --net user).", Arity = ArgumentArity.ZeroOrMore };
        var policy = NetCommand.PolicyOption();
        var cpus = new Option<int>("--cpus") { Description = "Virtual CPUs.", DefaultValueFactory = _ => 1 };
        var memory = new Option<int>("--memory", "-m") { Description = "Guest memory in MiB.", DefaultValueFactory = _ => 256 };
        var backend = new Option<BackendKind>("--backend") { Description = "auto, kvm, whp or interpreter.", DefaultValueFactory = _ => BackendKind.Auto };
        var kit = new Option<string?>("--kit") { Description = "The guest kit folder (default: see 'virt kit --help')." };
        var gdb = new Option<string?>("--gdb") { Description = "[HOST]:PORT: serve GDB's remote protocol there (loopback unless a host is given); the guest starts at GDB's first 'continue'. See docs/debugging.md." };
        var guestCommand = new Argument<string[]>("command") { Description = "A command to run in the guest (after --); without one the console is interactive.", Arity = ArgumentArity.ZeroOrMore };
        var command = new Command("run", "Boot a Linux guest; run a command in it (virt run -- uname -r) or attach its console.")
        {
            kernel, initrd, append, disks, net, forwards, policy, cpus, memory, backend, kit, gdb, guestCommand,
        };
        command.SetAction((result, ct) => RunAsync(new RunRequest
        {
            Kernel = result.GetValue(kernel),
            Initrd = result.GetValue(initrd),
            Append = result.GetValue(append) ?? "",
            Disks = result.GetValue(disks) ?? [],
            UserNetwork = result.GetValue(net) == "user",
            Forwards = result.GetValue(forwards) ?? [],
            Policy = result.GetValue(policy) ?? [],
            Cpus = result.GetValue(cpus),
            MemoryMiB = result.GetValue(memory),
            Backend = result.GetValue(backend),
            Kit = result.GetValue(kit),
            Gdb = result.GetValue(gdb),
            Command = result.GetValue(guestCommand) ?? [],
        }, ct));
        return command;
    }

    private sealed record RunRequest
    {
        public string? Kernel { get; init; }
        public string? Initrd { get; init; }
        public required string Append { get; init; }
        public required string[] Disks { get; init; }
        public bool UserNetwork { get; init; }
        public required string[] Forwards { get; init; }
        public required string[] Policy { get; init; }
        public int Cpus { get; init; }
        public int MemoryMiB { get; init; }
        public BackendKind Backend { get; init; }
        public string? Kit { get; init; }
        public string? Gdb { get; init; }
        public required string[] Command { get; init; }
    }

    private static async Task<int> RunAsync(RunRequest request, CancellationToken cancellationToken)
    {
        string? kernel = request.Kernel;
        string? initrd = request.Initrd;
        if (kernel is null)
        {
            var (kit, source) = GuestKit.Locate(request.Kit);
            if (!GuestKit.IsComplete(kit))
            {
                Console.Error.WriteLine($"virt run: no guest kit in {kit} (from {source}). Run 'virt kit' to build one, or give --kernel and --initrd.");
                return 2;
            }

            kernel = Path.Combine(kit, GuestKit.KernelFile);
            initrd ??= Path.Combine(kit, GuestKit.InitrdFile);
        }

        if (!TryParseNetworkOptions(request, out var networkOptions, out var gdbEndPoint))
        {
            return 2;
        }

        bool interactive = request.Command.Length == 0;
        var terminal = interactive ? ConsoleAttachment.Create() : null;
        bool attach = terminal is { IsTerminal: true };
        var cmdline = new StringBuilder("quiet");
        if (request.UserNetwork)
        {
            cmdline.Append(" virt.net=dhcp");
        }

        if (request.Append.Length > 0)
        {
            cmdline.Append(' ').Append(request.Append);
        }

        if (attach)
        {
            cmdline.Append(' ').Append(terminal!.GuestKernelParameters);
        }

        if (!interactive)
        {
            // The kit's /init decodes virt.cmd, runs it with sh -c and prints VIRT-EXIT-STATUS=<n> before powering off.
            cmdline.Append(" virt.cmd=").Append(Convert.ToBase64String(Encoding.UTF8.GetBytes(string.Join(' ', request.Command))));
        }

        var console = new ExitStatusScanner(Console.OpenStandardOutput());
        try
        {
            var builder = VirtualMachine.CreateBuilder()
                .WithBackend(request.Backend)
                .WithMemoryMiB(request.MemoryMiB)
                .WithVcpus(request.Cpus)
                .WithLinuxKernel(kernel)
                .WithKernelCommandLine(cmdline.ToString())
                .WithSerialConsole(console, interactive && !attach ? Console.OpenStandardInput() : null)
                .WithVirtioRng();
            if (initrd is not null)
            {
                builder = builder.WithInitrd(initrd);
            }

            foreach (string disk in request.Disks)
            {
                bool readOnly = disk.EndsWith(":ro", StringComparison.Ordinal);
                builder = builder.WithVirtioBlock(readOnly ? disk[..^3] : disk, readOnly);
            }

            if (request.UserNetwork)
            {
                builder = builder.WithUserNetwork(networkOptions);
            }

            await using var vm = builder.Build();
            Console.Error.WriteLine($"virt run: {vm.BackendSelection.Name} ({vm.BackendSelection.Reason})");
            if (attach)
            {
                Console.Error.WriteLine("virt run: Ctrl-A x stops the VM, Ctrl-A h prints help.");
            }

            VirtualMachineExit exit;
            await using (attach ? await terminal!.AttachAsync(vm, cancellationToken).ConfigureAwait(false) : null)
            {
                exit = await RunOrDebugAsync(vm, gdbEndPoint, cancellationToken).ConfigureAwait(false);
            }

            Console.Error.WriteLine($"virt run: guest stopped: {exit.Description}");
            if (exit.Reason is not (StopReason.PowerOff or StopReason.Reset))
            {
                return 1;
            }

            return console.Status ?? 0;
        }
        catch (Exception e) when (e is InvalidOperationException or ArgumentException or IOException or BootImageException or DiskImageException or System.Net.Sockets.SocketException)
        {
            Console.Error.WriteLine($"virt run: {e.Message}");
            return 2;
        }
        finally
        {
            if (terminal is not null)
            {
                await terminal.DisposeAsync().ConfigureAwait(false);
            }
        }
    }

    /// <summary>Parses --forward, --policy and --gdb; prints what is wrong and returns false for a usage error.</summary>
    private static bool TryParseNetworkOptions(RunRequest request, out UserModeNetworkOptions network, out IPEndPoint? gdb)
    {
        gdb = null;
        if (!NetCommand.TryBuildOptions(request.Policy, request.Forwards, "virt run", out network))
        {
            return false;
        }

        if ((request.Forwards.Length > 0 || request.Policy.Length > 0) && !request.UserNetwork)
        {
            Console.Error.WriteLine("virt run: --forward and --policy need --net user.");
            return false;
        }

        if (request.Gdb is { } gdbText && !TryParseEndPoint(gdbText, out gdb))
        {
            Console.Error.WriteLine($"virt run: --gdb takes [HOST]:PORT with an IP address or localhost, e.g. :1234 (got '{gdbText}').");
            return false;
        }

        return true;
    }

    /// <summary>Runs the VM to its end, or with <paramref name="gdb"/> serves GDB there, whose first "continue" starts it.</summary>
    private static async Task<VirtualMachineExit> RunOrDebugAsync(VirtualMachine vm, IPEndPoint? gdb, CancellationToken cancellationToken)
    {
        if (gdb is null)
        {
            return await vm.RunAsync(cancellationToken).ConfigureAwait(false);
        }

        await using var server = await vm.StartGdbServerAsync(gdb, cancellationToken).ConfigureAwait(false);
        Console.Error.WriteLine($"virt run: waiting for GDB: gdb -ex 'target remote {gdb}'");
        try
        {
            return await vm.WaitForExitAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            return await vm.StopAsync(CancellationToken.None).ConfigureAwait(false);
        }
    }

    /// <summary>[HOST]:PORT; no host means the loopback interface (the stub gives full control of the guest).</summary>
    private static bool TryParseEndPoint(string text, [NotNullWhen(true)] out IPEndPoint? endPoint)
    {
        endPoint = null;
        int colon = text.LastIndexOf(':');
        string host = colon > 0 ? text[..colon].Trim('[', ']') : "127.0.0.1";
        if (colon < 0 || !int.TryParse(text.AsSpan(colon + 1), NumberStyles.None, CultureInfo.InvariantCulture, out int port) || port > 65535)
        {
            return false;
        }

        if (!IPAddress.TryParse(host == "localhost" ? "127.0.0.1" : host, out var address))
        {
            return false;
        }

        endPoint = new IPEndPoint(address, port);
        return true;
    }
}
