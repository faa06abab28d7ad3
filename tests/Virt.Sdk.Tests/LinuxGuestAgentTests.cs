using System.Diagnostics;
using System.Security.Cryptography;
using System.Text.RegularExpressions;
using Virt.Testing;
using Xunit;

namespace Virt.Sdk.Tests;

/// <summary>
/// Commands, files and streams between the host and one booted Linux guest, all over virtio-vsock: the agent runs
/// commands (exit codes, stdout, stderr, stdin), copies 10 MiB each way (hashes checked on both sides), and a guest
/// program connects to a host listener.
/// </summary>
[Collection(nameof(BootedDevicesGuest))]
public sealed class LinuxGuestAgentTests(BootedDevicesGuest guest)
{
    private const int BigSize = 10 << 20;

    private VirtualMachine Vm
    {
        get
        {
            guest.Require();
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
