using System.Diagnostics;
using System.Security.Cryptography;
using System.Text.RegularExpressions;
using Virt.Testing;
using Xunit;

namespace Virt.Sdk.Tests;

/// <summary>
/// One Linux guest on the interpreter with a vsock device and the guest kit's agent, booted once for the class.
/// </summary>
public sealed class BootedAgentGuest : IAsyncLifetime
{
    public VirtualMachine? Vm { get; private set; }

    public MarkerStream Console { get; } = new("VIRT-INIT-READY");

    public string? SkipReason { get; private set; }

    public TimeSpan BootToAgent { get; private set; }

    public async ValueTask InitializeAsync()
    {
        if (!File.Exists(LinuxKit.Kernel) || !File.Exists(LinuxKit.Initrd))
        {
            SkipReason = "The guest kit is missing; run scripts/get-linux-guest.sh.";
            return;
        }

        Vm = VirtualMachine.CreateBuilder()
            .WithInterpreter()
            .WithMemoryMiB(256)
            .WithLinuxKernel(LinuxKit.Kernel)
            .WithInitrd(LinuxKit.Initrd)
            .WithKernelCommandLine("quiet")
            .WithSerialConsole(Console)
            .WithVsock(guestCid: 42)
            .WithGuestAgent()
            .Build();
        using var timeout = new CancellationTokenSource(TimeSpan.FromMinutes(5));
        var clock = Stopwatch.StartNew();
        await Vm.StartAsync(timeout.Token);
        var exited = Vm.WaitForExitAsync(timeout.Token);
        await Task.WhenAny(Vm.WaitForAgentAsync(timeout.Token), exited).WaitAsync(timeout.Token);
        BootToAgent = clock.Elapsed;
        if (exited.IsCompleted)
        {
            throw new InvalidOperationException($"The guest stopped before its agent announced itself: {exited.Result.Description}\n{Console.Text}");
        }
    }

    public async ValueTask DisposeAsync()
    {
        if (Vm is not null)
        {
            await Vm.DisposeAsync();
        }
    }
}

/// <summary>
/// Commands, files and streams between the host and one booted Linux guest, all over virtio-vsock: the agent runs
/// commands (exit codes, stdout, stderr, stdin), copies 10 MiB each way (hashes checked on both sides), and a guest
/// program connects to a host listener.
/// </summary>
public sealed class LinuxGuestAgentTests(BootedAgentGuest guest) : IClassFixture<BootedAgentGuest>
{
    private const int BigSize = 10 << 20;

    private VirtualMachine Vm
    {
        get
        {
            Assert.SkipWhen(guest.SkipReason is not null, guest.SkipReason ?? "");
            return guest.Vm!;
        }
    }

    [Fact]
    public async Task Exec_runs_three_commands_with_their_exit_codes_output_and_input()
    {
        var vm = Vm;
        var ct = TestContext.Current.CancellationToken;

        var failing = await vm.ExecAsync("sh", ["-c", "echo to-stdout; echo to-stderr >&2; exit 3"], cancellationToken: ct);
        Assert.Equal(3, failing.ExitCode);
        Assert.Equal("to-stdout\n", failing.StandardOutput);
        Assert.Equal("to-stderr\n", failing.StandardError);

        var cat = await vm.ExecAsync("cat", standardInput: "piped through the guest\n", cancellationToken: ct);
        Assert.True(cat.Succeeded, cat.StandardError);
        Assert.Equal("piped through the guest\n", cat.StandardOutput);

        var uname = await vm.ExecAsync("uname", ["-r"], cancellationToken: ct);
        Assert.Equal(0, uname.ExitCode);
        string release = File.ReadAllText(Path.Combine(RepositoryPaths.LinuxGuestKit, "kernel.release")).Trim();
        Assert.Equal(release, uname.StandardOutput.Trim());

        var missing = await vm.ExecAsync("/no/such/program", cancellationToken: ct);
        Assert.Equal(127, missing.ExitCode);
        Assert.Contains("/no/such/program", missing.StandardError, StringComparison.Ordinal);

        // The latency of a trivial command, for the record (no assertion on time).
        var clock = Stopwatch.StartNew();
        const int Rounds = 5;
        for (int i = 0; i < Rounds; i++)
        {
            Assert.Equal(0, (await vm.ExecAsync("true", cancellationToken: ct)).ExitCode);
        }

        TestContext.Current.TestOutputHelper?.WriteLine($"ExecAsync(\"true\") on the interpreter: {clock.Elapsed.TotalMilliseconds / Rounds:F0} ms per command (mean of {Rounds}); boot to agent {guest.BootToAgent.TotalSeconds:F1} s");
        var line = await vm.WaitForConsoleLineAsync(new Regex("^virt-agent: listening on vsock port 1024$"), TimeSpan.FromSeconds(1), ct);
        Assert.Contains("1024", line, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Ten_MiB_go_to_the_guest_and_back_over_vsock_with_matching_hashes()
    {
        var vm = Vm;
        var ct = TestContext.Current.CancellationToken;
        byte[] payload = new byte[BigSize];
        new Random(1717).NextBytes(payload);
        string expected = Convert.ToHexStringLower(SHA256.HashData(payload));

        var clock = Stopwatch.StartNew();
        await vm.CopyToGuestAsync(new MemoryStream(payload), "/tmp/big", ct);
        var toGuest = clock.Elapsed;
        var sum = await vm.ExecAsync("sha256sum", ["/tmp/big"], cancellationToken: ct);
        Assert.Equal($"{expected}  /tmp/big", sum.StandardOutput.Trim());

        using var back = new MemoryStream();
        clock.Restart();
        await vm.CopyFromGuestAsync("/tmp/big", back, ct);
        var fromGuest = clock.Elapsed;
        Assert.Equal(BigSize, back.Length);
        Assert.Equal(expected, Convert.ToHexStringLower(SHA256.HashData(back.ToArray())));
        TestContext.Current.TestOutputHelper?.WriteLine($"vsock copy on the interpreter: to the guest {BigSize / 1048576.0 / toGuest.TotalSeconds:F2} MiB/s, from the guest {BigSize / 1048576.0 / fromGuest.TotalSeconds:F2} MiB/s");

        var missing = await Assert.ThrowsAsync<GuestAgentException>(() => vm.CopyFromGuestAsync("/no/such/file", Stream.Null, ct));
        Assert.Contains("No such file", missing.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_guest_program_connects_to_a_host_listener_and_gets_its_bytes_echoed()
    {
        var vm = Vm;
        var ct = TestContext.Current.CancellationToken;
        const uint Port = 7000;
        const int Size = 1 << 20;
        using var listener = vm.Vsock.Listen(Port);
        Assert.Equal(42ul, vm.Vsock.GuestCid);

        // The guest sends 1 MiB of its own random bytes, half-closes, and stores what the host echoes.
        var run = vm.ExecAsync("sh", ["-c", $"head -c {Size} /dev/urandom > /tmp/sent && virt-agent connect {Port} < /tmp/sent > /tmp/echoed && sha256sum /tmp/sent /tmp/echoed"], cancellationToken: ct);
        await using (var stream = await listener.AcceptAsync(ct))
        {
            using var received = new MemoryStream();
            await stream.CopyToAsync(received, ct);
            Assert.Equal(Size, received.Length);
            received.Position = 0;
            await received.CopyToAsync(stream, ct);
            await stream.FlushAsync(ct);
        }

        var result = await run;
        Assert.True(result.Succeeded, result.StandardError);
        var sums = result.StandardOutput.Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => l.Split(' ')[0]).ToArray();
        Assert.Equal(2, sums.Length);
        Assert.Equal(sums[0], sums[1]);
    }
}
