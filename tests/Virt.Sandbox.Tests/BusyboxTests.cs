#pragma warning disable CA5351 // MD5 is what md5sum computes; it is compared, not used for security.
using System.Text;
using Virt.Testing;
using Xunit;

namespace Virt.Sandbox.Tests;

/// <summary>Debian busybox-static applets on stdin: the sandbox's output must equal the same applet run natively.</summary>
public sealed class BusyboxTests
{
    private static readonly byte[] Text = Encoding.ASCII.GetBytes(string.Join('\n', Enumerable.Range(0, 400).Select(i => $"line {(i * 7919) % 400} of the banana list {i % 13}")) + "\n");

    public static TheoryData<string[]> Applets => new()
    {
        new[] { "md5sum" },
        new[] { "sort" },
        new[] { "sort", "-r", "-n", "-k", "2" },
        new[] { "wc" },
        new[] { "sed", "s/an/AN/g" },
        new[] { "tr", "a-z", "A-Z" },
    };

    [Theory]
    [MemberData(nameof(Applets))]
    public async Task Applet_output_equals_native_busybox(string[] args)
    {
        HostRequirements.RequireKvm();
        string busybox = Busybox.PathOrSkip();
        var native = CPrograms.Run(busybox, args, Text);
        Assert.Equal(0, native.ExitCode);

        await using var sandbox = Sandbox.CreateBuilder().WithExecutable(busybox).WithExecutablePath("/bin/busybox")
            .WithArguments(args).WithBackend(BackendKind.Kvm).WithTimeLimit(TimeSpan.FromSeconds(30)).Build();
        var result = await sandbox.RunAsync(Text, TestContext.Current.CancellationToken);
        Assert.True(result.Status == SandboxStatus.Exited && result.ExitCode == 0,
            $"{result} {result.Message} stderr={result.StderrText} unsupported={string.Join(",", result.UnsupportedSystemCalls)}");
        Assert.Equal(native.Output, result.StdoutText);
    }

    [Fact]
    public async Task Warm_md5sum_serves_many_inputs_from_one_snapshot()
    {
        HostRequirements.RequireKvm();
        string busybox = Busybox.PathOrSkip();
        await using var sandbox = Sandbox.CreateBuilder().WithExecutable(busybox).WithExecutablePath("/bin/busybox").WithArguments("md5sum").WithBackend(BackendKind.Kvm).Build();
        for (int i = 0; i < 4; i++)
        {
            var input = Encoding.ASCII.GetBytes($"input number {i}\n");
            var result = await sandbox.RunAsync(input, TestContext.Current.CancellationToken);
            Assert.True(result.Status == SandboxStatus.Exited, $"{result} {result.Message} {result.StderrText}");
            string expected = Convert.ToHexStringLower(System.Security.Cryptography.MD5.HashData(input)) + "  -\n";
            Assert.Equal(expected, result.StdoutText);
        }

        Assert.True(sandbox.IsWarm);
    }

    [Fact]
    public async Task Pool_serves_concurrent_calls()
    {
        HostRequirements.RequireKvm();
        string busybox = Busybox.PathOrSkip();
        var builder = Sandbox.CreateBuilder().WithExecutable(busybox).WithExecutablePath("/bin/busybox").WithArguments("md5sum").WithBackend(BackendKind.Kvm);
        await using var pool = await SandboxPool.CreateAsync(builder, 2, TestContext.Current.CancellationToken);
        var inputs = Enumerable.Range(0, 8).Select(i => Encoding.ASCII.GetBytes($"pooled {i}")).ToArray();
        var results = await Task.WhenAll(inputs.Select(i => pool.RunAsync(i, TestContext.Current.CancellationToken)));
        for (int i = 0; i < inputs.Length; i++)
        {
            Assert.Equal(Convert.ToHexStringLower(System.Security.Cryptography.MD5.HashData(inputs[i])) + "  -\n", results[i].StdoutText);
        }
    }
}
