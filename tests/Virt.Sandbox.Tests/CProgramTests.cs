using System.Text;
using Virt.Testing;
using Xunit;

namespace Virt.Sandbox.Tests;

/// <summary>Real programs built with gcc -static, run on KVM.</summary>
public sealed class CProgramTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private static SandboxBuilder Builder(string program) =>
        Sandbox.CreateBuilder().WithExecutable(CPrograms.Get(program)).WithBackend(BackendKind.Kvm).WithTimeLimit(TimeSpan.FromSeconds(20));

    private static void AssertExited(SandboxResult result, int code = 0) =>
        Assert.True(result.Status == SandboxStatus.Exited && result.ExitCode == code,
            $"{result} {result.Message}\nstdout: {result.StdoutText}\nstderr: {result.StderrText}\nunsupported: {string.Join(",", result.UnsupportedSystemCalls.Keys)}");

    [Fact]
    public async Task Hello_prints_its_greeting()
    {
        HostRequirements.RequireKvm();
        await using var sandbox = Builder("hello").Build();
        var result = await sandbox.RunAsync(default, Ct);
        AssertExited(result);
        Assert.Equal("hello, sandbox\n", result.StdoutText);
    }

    [Fact]
    public async Task Arguments_and_environment_reach_main()
    {
        HostRequirements.RequireKvm();
        await using var sandbox = Builder("args").WithArguments("one", "two words").WithEnvironment("GREETING=hi there").WithExecutablePath("/bin/args").Build();
        var result = await sandbox.RunAsync(default, Ct);
        AssertExited(result, 3);
        Assert.Equal("argv[0]=/bin/args\nargv[1]=one\nargv[2]=two words\nGREETING=hi there\n", result.StdoutText);
    }

    [Fact]
    public async Task Granted_file_is_readable_and_listed()
    {
        HostRequirements.RequireKvm();
        await using var sandbox = Builder("fileread").WithFile("/data/input.txt", "alpha\nbeta\n"u8.ToArray()).Build();
        var result = await sandbox.RunAsync(default, Ct);
        AssertExited(result);
        Assert.Equal("alpha\nbeta\nlines=2\nentry=input.txt\n", result.StdoutText);
    }

    [Fact]
    public async Task Malloc_heavy_program_gets_its_memory_and_the_right_answer()
    {
        HostRequirements.RequireKvm();
        await using var sandbox = Builder("mallocheavy").Build();
        var result = await sandbox.RunAsync(default, Ct);
        AssertExited(result);
        var native = CPrograms.Run(Path.Combine(Path.GetTempPath(), "virt-sandbox-tests-" + Environment.ProcessId, "mallocheavy"), "");
        Assert.Equal(native.Output, result.StdoutText);
        Assert.True(result.Usage.PeakMemoryBytes > 3 << 20, $"peak {result.Usage.PeakMemoryBytes}");
    }

    [Fact]
    public async Task Host_function_call_round_trips_bytes()
    {
        HostRequirements.RequireKvm();
        await using var sandbox = Builder("hostcall")
            .WithHostFunction("echo_upper", input => Encoding.ASCII.GetBytes(Encoding.ASCII.GetString(input.Span).ToUpperInvariant()))
            .Build();
        var result = await sandbox.RunAsync(default, Ct);
        AssertExited(result);
        Assert.Equal("host said PING\nmissing=-2\n", result.StdoutText);
    }

    [Fact]
    public async Task Abort_ends_the_run_with_SIGABRT()
    {
        HostRequirements.RequireKvm();
        await using var sandbox = Builder("abort").Build();
        var result = await sandbox.RunAsync(default, Ct);
        Assert.Equal(SandboxStatus.Signaled, result.Status);
        Assert.Equal(6, result.Signal);
    }

    [Fact]
    public async Task Warm_calls_reset_to_the_snapshot_and_echo_each_input()
    {
        HostRequirements.RequireKvm();
        await using var sandbox = Builder("echo").Build();
        for (int i = 0; i < 5; i++)
        {
            var input = Encoding.ASCII.GetBytes($"call {i} " + new string('x', i * 300));
            var result = await sandbox.RunAsync(input, Ct);
            AssertExited(result);
            Assert.Equal(input, result.Stdout.ToArray());
            Assert.True(sandbox.IsWarm);
            if (i > 0)
            {
                Assert.InRange(result.Usage.RestoredPages, 1, 64);
            }
        }
    }
}
