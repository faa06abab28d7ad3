using System.Text;
using Virt.Boot;
using Virt.Devices;
using Virt.Network;
using Virt.Testing;
using Xunit;

namespace Virt.Sdk.Tests;

public sealed class LinuxGuestTests
{
    private static readonly string Kernel = Path.Combine(RepositoryPaths.LinuxGuestKit, "vmlinuz");
    private static readonly string Initrd = Path.Combine(RepositoryPaths.LinuxGuestKit, "initramfs.cpio");

    [Fact]
    public void Corrupt_kernel_is_refused_naming_the_field()
    {
        var garbage = new byte[64 * 1024];
        garbage[0x1FE] = 0x55;
        var ex = Assert.Throws<BootImageException>(() => VirtualMachine.CreateBuilder()
            .WithInterpreter().WithMemoryMiB(256).WithLinuxKernel(garbage).Build());
        Assert.False(string.IsNullOrEmpty(ex.Field));
        Assert.Contains(ex.Field, ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Linux_guest_with_too_little_memory_is_refused_with_a_size_to_use()
    {
        var ex = Assert.Throws<ArgumentException>(() => VirtualMachine.CreateBuilder()
            .WithInterpreter().WithMemoryMiB(64).WithLinuxKernel(new byte[4096]).Build());
        Assert.Contains("WithMemoryMiB(256)", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Missing_kernel_file_points_at_the_guest_kit()
    {
        var ex = Assert.Throws<FileNotFoundException>(() => VirtualMachine.CreateBuilder().WithLinuxKernel("/nonexistent/vmlinuz"));
        Assert.Contains("get-linux-guest.sh", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Initrd_without_kernel_is_refused()
    {
        var ex = Assert.Throws<ArgumentException>(() => VirtualMachine.CreateBuilder().WithInterpreter().WithInitrd(new byte[16]).Build());
        Assert.Contains("WithLinuxKernel", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Debian_kernel_is_decompressed_on_the_host_and_entered_through_its_pvh_note()
    {
        await using var vm = LinuxGuest("interpreter", command: null, Stream.Null).Build();
        Assert.Equal("quiet console=ttyS0", vm.KernelCommandLine);
        var regs = vm.GetRegisters(0);
        // PVH entry: 32-bit, EBX points at hvm_start_info (magic 0x336EC578), whose cmdline_paddr is the command line.
        Assert.Equal(0x336EC578u, vm.Memory.Read<uint>(new GuestAddress(regs.Rbx)));
        ulong cmdPtr = vm.Memory.Read<ulong>(new GuestAddress(regs.Rbx + 24));
        var cmd = new byte[vm.KernelCommandLine!.Length];
        vm.Memory.Read(new GuestAddress(cmdPtr), cmd);
        Assert.Equal(vm.KernelCommandLine, Encoding.ASCII.GetString(cmd));
        // The vmlinux's own entry, inside the kernel linked at 16 MiB, rather than the bzImage's at load + 0x200.
        Assert.InRange(regs.Rip, 0x1000000UL, 0x2000000UL);
        Assert.NotEqual(0x200UL, regs.Rip & 0xFFF);
        // The ELF header ended up nowhere: guest memory at 16 MiB holds the kernel's first instructions.
        Assert.NotEqual(0x464C457Fu, vm.Memory.Read<uint>(new GuestAddress(0x1000000)));
    }

    [Fact]
    public async Task Debian_kernel_is_placed_with_console_command_line_and_acpi()
    {
        await using var vm = LinuxGuest("interpreter", command: null, Stream.Null).WithHostKernelDecompression(false).WithVirtioRng().Build();
        Assert.Equal("quiet console=ttyS0", vm.KernelCommandLine);
        var regs = vm.GetRegisters(0);
        // 64-bit boot protocol: RSI points at the zero page, whose header has the "HdrS" magic at 0x202.
        Assert.Equal(0x53726448u, vm.Memory.Read<uint>(new GuestAddress(regs.Rsi + 0x202)));
        ulong cmdPtr = vm.Memory.Read<uint>(new GuestAddress(regs.Rsi + 0x228));
        var cmd = new byte[vm.KernelCommandLine!.Length];
        vm.Memory.Read(new GuestAddress(cmdPtr), cmd);
        Assert.Equal(vm.KernelCommandLine, Encoding.ASCII.GetString(cmd));
        Assert.Equal(0x200UL, regs.Rip & 0xFFF);
    }

    /// <summary>The boot tests run on the interpreter everywhere and on KVM where the host has hardware virtualization.</summary>
    public static TheoryData<string> Backends() => new() { "interpreter", "kvm" };

    /// <summary>
    /// On KVM with hardware virtualization, a boot of its own. On the interpreter the same device is in the shared guest
    /// and <see cref="LinuxAcpiDeviceTests"/> checks it there (one boot fewer per run).
    /// </summary>
    [Fact]
    public async Task Debian_kernel_boots_to_init_runs_a_command_finds_a_device_through_acpi_and_powers_off_on_kvm()
    {
        // A device of the test's own with an ACPI ID: the kernel must list its window and ports under that ID, and
        // reading the window at the address the kernel found returns the device's signature.
        var (exit, text) = await Boot("kvm", SignatureDevice.Command, b => SignatureDevice.Add(b));
        Assert.Contains("VIRT-INIT-READY", text, StringComparison.Ordinal);
        Assert.Contains("6.1.0", text, StringComparison.Ordinal);
        Assert.Contains("VIRT-EXIT-STATUS=0", text, StringComparison.Ordinal);
        Assert.True(exit.Reason == StopReason.PowerOff, exit.Description + "\n" + text);
        SignatureDevice.AssertFound(text);
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public async Task Reboot_in_the_guest_ends_the_vm_with_a_reset_reason(string backend)
    {
        await using var shell = await ApplianceShell.StartAsync(backend, cancellationToken: Ct);
        using var timeout = Timeout(TimeSpan.FromMinutes(2));
        await shell.TypeAsync("reboot -f", timeout.Token);
        var exit = await shell.Vm.WaitForExitAsync(timeout.Token);
        Assert.True(exit.Reason == StopReason.Reset, exit.Description + "\n" + shell.Text);
    }

    [Fact]
    public async Task Debian_kernel_finds_the_acpi_pm_timer_through_the_fadt()
    {
        // The appliance's kernel chose its clock sources when it booted (the one boot the shared snapshot was made from).
        const string sysfs = "/sys/devices/system/clocksource/clocksource0";
        await using var shell = await ApplianceShell.StartAsync("interpreter", cancellationToken: Ct);
        using var timeout = Timeout(TimeSpan.FromMinutes(2));
        var (exit, text) = await shell.RunToExitAsync($"cat {sysfs}/available_clocksource {sysfs}/current_clocksource", timeout.Token);
        Assert.True(exit.Reason == StopReason.PowerOff, exit.Description + "\n" + text);
        Assert.Contains("VIRT-EXIT-STATUS=0", text, StringComparison.Ordinal);
        Assert.True(text.Contains("acpi_pm", StringComparison.Ordinal), text);
    }

    [Fact]
    public async Task The_kernels_crypto_self_tests_pass_on_the_interpreter()
    {
        // The shared appliance's boot is the one test boot that runs the kernel's crypto self-tests (every other boot skips
        // them: KernelParameters.SkipCryptoSelfTests). Their arithmetic exercises the interpreter; a failure does not stop
        // the boot, it warns in the kernel log and taints the kernel (TAINT_WARN, 512), so both are looked at here, with
        // /proc/crypto's count of tested algorithms. The grep patterns differ from the lines they find, so the echo of
        // the typed command cannot match.
        await using var shell = await ApplianceShell.StartAsync("interpreter", cancellationToken: Ct);
        using var timeout = Timeout(TimeSpan.FromMinutes(2));
        var (exit, text) = await shell.RunToExitAsync(
            "echo SELFTEST-PASSED=$(grep -c \"^selftest.*: passed\" /proc/crypto) SELFTEST-UNKNOWN=$(grep -c \"^selftest.*: unknown\" /proc/crypto) "
            + "WARN-TAINT=$(( $(cat /proc/sys/kernel/tainted) & 512 )); dmesg | grep -E \"alg: self-test[s] (disabled|for .* failed)\"; true",
            timeout.Token);
        Assert.True(exit.Reason == StopReason.PowerOff, exit.Description + "\n" + text);
        Assert.Contains("VIRT-EXIT-STATUS=0", text, StringComparison.Ordinal);
        Assert.Matches(@"SELFTEST-PASSED=[1-9][0-9]* SELFTEST-UNKNOWN=0 WARN-TAINT=0\b", text);
        Assert.DoesNotContain("alg: self-tests", text, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Halt_in_the_guest_ends_the_vm_with_a_halted_reason_on_the_interpreter()
    {
        // On KVM the in-kernel local APIC keeps a halted vCPU waiting inside KVM_RUN instead.
        await using var shell = await ApplianceShell.StartAsync("interpreter", cancellationToken: Ct);
        using var timeout = Timeout(TimeSpan.FromMinutes(2));
        await shell.TypeAsync("halt -f", timeout.Token);
        var exit = await shell.Vm.WaitForExitAsync(timeout.Token);
        Assert.True(exit.Reason == StopReason.Halted, exit.Description + "\n" + shell.Text);
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public async Task Commands_typed_into_the_serial_console_reach_the_guest_shell_without_loss(string backend)
    {
        // The appliance's interactive shell on ttyS0. The typed line is far longer than the UART's 16-byte FIFO, so it
        // only arrives whole if the host waits for the guest to read (flow control).
        string word = string.Concat(Enumerable.Repeat("0123456789", 30));
        await using var shell = await ApplianceShell.StartAsync(backend, cancellationToken: Ct);
        using var timeout = Timeout(TimeSpan.FromMinutes(3));
        await shell.Vm.WriteToSerialConsoleAsync(Encoding.ASCII.GetBytes($"echo {word} | wc -c; echo typed-$((6*7))\nexit\n"), timeout.Token);
        var exit = await shell.Vm.WaitForExitAsync(timeout.Token);

        string text = shell.Text;
        Assert.True(exit.Reason == StopReason.PowerOff, exit.Description + "\n" + text);
        Assert.Contains("typed-42", text, StringComparison.Ordinal);
        Assert.Contains("\n301", text, StringComparison.Ordinal);
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public async Task Guest_mounts_an_ext4_virtio_disk_reads_a_file_and_writes_one_the_host_finds(string backend)
    {
        // The appliance's disk (made by mkfs.ext4 on the host, with payload.bin) is mounted again from scratch.
        string expectedSha256 = Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(BootedAppliance.Payload()));
        await using var shell = await ApplianceShell.StartAsync(backend, cancellationToken: Ct);
        using var timeout = Timeout(TimeSpan.FromMinutes(3));
        var (exit, text) = await shell.RunToExitAsync(
            "umount /mnt && mount -t ext4 /dev/vda /mnt && sha256sum /mnt/payload.bin && echo written-in-the-guest > /mnt/from-guest.txt && sync && umount /mnt",
            timeout.Token);

        Assert.True(exit.Reason == StopReason.PowerOff, exit.Description + "\n" + text);
        Assert.Contains($"{expectedSha256}  /mnt/payload.bin", text, StringComparison.Ordinal);
        Assert.Contains("VIRT-EXIT-STATUS=0", text, StringComparison.Ordinal);
        await shell.Vm.DisposeAsync();
        Assert.Equal("written-in-the-guest\n", HostTools.Run("debugfs", $"-R \"cat /from-guest.txt\" {shell.Disk}"));
        HostTools.Run("e2fsck", $"-f -n {shell.Disk}");
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public async Task Guest_pings_a_peer_on_a_virtual_network_over_virtio_net(string backend)
    {
        var network = new VirtualNetwork("linux-ping");
        network.Start();
        await using var peer = new PingResponder(network, System.Net.IPAddress.Parse("10.0.14.2"), MacAddress.Parse("02:00:00:00:00:02"));
        await using var shell = await ApplianceShell.StartAsync(backend, network.Attach("guest"), cancellationToken: Ct);

        // -w 60: ping stops after three replies or 60 s, however slow a loaded host makes the replies.
        using var timeout = Timeout(TimeSpan.FromMinutes(3));
        var (exit, text) = await shell.RunToExitAsync("ping -c 3 -w 60 10.0.14.2", timeout.Token);

        AssertPingedThreeTimes(exit, text);
        Assert.True(peer.ArpReplies >= 1, $"the peer answered {peer.ArpReplies} ARP requests\n{text}");
        Assert.Equal(3, peer.EchoReplies);
    }

    [Theory]
    [MemberData(nameof(Backends))]
    [System.Runtime.Versioning.SupportedOSPlatform("linux")]
    public async Task Guest_reaches_the_host_network_stack_through_a_tap_device(string backend)
    {
        // The TAP device and its address live in a throw-away network namespace, away from the host's own network.
        using var ns = NetworkNamespace.CreateOrSkip();
        await using var tap = ns.Enter(() => TapBackend.Open("vtapguest"));
        ns.Ip("addr add 10.0.5.1/24 dev vtapguest");
        ns.Ip("link set vtapguest up");

        await using var shell = await ApplianceShell.StartAsync(backend, tap, cancellationToken: Ct);
        using var timeout = Timeout(TimeSpan.FromMinutes(3));
        var (exit, text) = await shell.RunToExitAsync(
            "ip addr flush dev eth0 && ip addr add 10.0.5.2/24 dev eth0 && ping -c 3 -w 60 10.0.5.1", timeout.Token);

        AssertPingedThreeTimes(exit, text);
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public async Task Two_guests_on_a_private_virtual_network_ping_each_other_and_talk_http(string backend)
    {
        var host = new VirtualNetworkHost();
        var network = host.Create("appliances");
        network.Start();

        // Two appliances from one snapshot share its MAC address: each takes an address of its own first.
        await using var server = await ApplianceShell.StartAsync(backend, network.Attach("server"), "server", Ct);
        await using var client = await ApplianceShell.StartAsync(backend, network.Attach("client"), "client", Ct);
        using var timeout = Timeout(TimeSpan.FromMinutes(5));
        await server.TypeAsync(
            "ip link set eth0 down && ip link set eth0 address 02:00:00:00:03:01 && ip link set eth0 up && ip addr flush dev eth0 && "
            + "mkdir -p /www && seq 1 20000 > /www/numbers.txt && sha256sum /www/numbers.txt && httpd -p 80 -h /www && "
            + "ip addr add 10.0.3.1/24 dev eth0 && echo SERVER-UP-$((6*7))", timeout.Token);

        // Readiness: busybox httpd listens before it returns, and the server's address comes up only after that, so
        // the first ping the server answers means the web server is there. The client waits for that ping (each try
        // waits a second for a reply; 600 tries bound it well past the test's own timeout), pings three times and
        // fetches a file over HTTP.
        var (clientExit, clientText) = await client.RunToExitAsync(
            "ip link set eth0 down && ip link set eth0 address 02:00:00:00:03:02 && ip link set eth0 up && ip addr flush dev eth0 && ip addr add 10.0.3.2/24 dev eth0 && "
            + "i=0; until ping -c 1 -W 1 10.0.3.1 >/dev/null; do i=$((i+1)); [ $i -lt 600 ] || exit 9; done; ping -c 3 -w 60 10.0.3.1 && "
            + "wget -qO /tmp/numbers.txt http://10.0.3.1/numbers.txt && sha256sum /tmp/numbers.txt", timeout.Token);
        var serverExit = await server.Vm.StopAsync(timeout.Token);

        string serverText = server.Text;
        Assert.True(clientExit.Reason == StopReason.PowerOff, clientExit.Description + "\n" + clientText);
        Assert.True(clientText.Contains("3 packets transmitted, 3 packets received", StringComparison.Ordinal), clientText + "\n--- server ---\n" + serverText
            + $"\n--- network: forwarded {network.FramesForwarded}, flooded {network.FramesFlooded}, dropped {network.FramesDropped}; "
            + string.Join(", ", network.Ports.Select(p => $"{p.Name} delivered {p.FramesDelivered} dropped {p.FramesDropped}")));
        Assert.Contains("VIRT-EXIT-STATUS=0", clientText, StringComparison.Ordinal);
        Assert.Contains("SERVER-UP-42", serverText, StringComparison.Ordinal);
        // A 109 KB file over TCP (many segments, checksums completed by the device) arrives intact.
        string expected = Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(
            Encoding.ASCII.GetBytes(string.Concat(Enumerable.Range(1, 20000).Select(i => i + "\n")))));
        Assert.Contains($"{expected}  /www/numbers.txt", serverText, StringComparison.Ordinal);
        Assert.Contains($"{expected}  /tmp/numbers.txt", clientText, StringComparison.Ordinal);
        Assert.Equal(StopReason.StoppedByHost, serverExit.Reason);
    }

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private static CancellationTokenSource Timeout(TimeSpan after)
    {
        var timeout = CancellationTokenSource.CreateLinkedTokenSource(Ct);
        timeout.CancelAfter(after);
        return timeout;
    }

    /// <summary>A Linux guest builder on <paramref name="backend"/>; skips the test when the guest kit or (for KVM) hardware virtualization is missing.</summary>
    private static VirtualMachineBuilder LinuxGuest(string backend, string? command, Stream console)
    {
        Assert.SkipUnless(File.Exists(Kernel) && File.Exists(Initrd), "The guest kit is missing; run scripts/get-linux-guest.sh.");
        var builder = VirtualMachine.CreateBuilder();
        if (backend == "kvm")
        {
            HostRequirements.RequireKvm();
            Assert.SkipUnless(HasHardwareVirtualization(), "This host's KVM has no hardware virtualization (no vmx/svm flag); a stock kernel does not run on it (see docs/linux-guests.md). The interpreter variant of this test runs instead.");
            builder = builder.WithKvm();
        }
        else
        {
            builder = builder.WithInterpreter();
        }

        return builder
            .WithMemoryMiB(256)
            .WithLinuxKernel(Kernel)
            .WithInitrd(Initrd)
            .WithKernelCommandLine(command is null ? "quiet" : $"quiet virt.cmd={Convert.ToBase64String(Encoding.ASCII.GetBytes(command))}")
            .WithSerialConsole(console);
    }

    /// <summary>The guest's `ping -c 3` got all three replies and the guest powered off after its command succeeded.</summary>
    private static void AssertPingedThreeTimes(VirtualMachineExit exit, string text)
    {
        Assert.True(exit.Reason == StopReason.PowerOff, exit.Description + "\n" + text);
        Assert.True(text.Contains("3 packets transmitted, 3 packets received", StringComparison.Ordinal), text);
        Assert.Contains("VIRT-EXIT-STATUS=0", text, StringComparison.Ordinal);
    }

    private static string Text(MemoryStream output)
    {
        lock (output)
        {
            return Encoding.UTF8.GetString(output.ToArray());
        }
    }

    private static async Task<(VirtualMachineExit Exit, string Output)> Boot(string backend, string command, Func<VirtualMachineBuilder, VirtualMachineBuilder>? configure = null)
    {
        var output = new MemoryStream();
        var builder = LinuxGuest(backend, command, output);
        await using var vm = (configure?.Invoke(builder) ?? builder).Build();
        using var timeout = new CancellationTokenSource(TimeSpan.FromMinutes(4));
        var exit = await vm.RunAsync(timeout.Token);
        return (exit, Text(output));
    }

    private static bool HasHardwareVirtualization() => new Virt.Cpu.Kvm.KvmHypervisor().GetAvailability().SlowKernelMode is null;
}
