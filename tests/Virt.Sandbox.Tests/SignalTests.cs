using Virt.Testing;
using Xunit;

namespace Virt.Sandbox.Tests;

/// <summary>Signals delivered to handlers, interval timers and the vDSO, on KVM and on the interpreter (Programs/signals.c).</summary>
public sealed class SignalTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    /// <summary>Scenarios whose output natively is the same (the native run is compared as well as the expected text).</summary>
    private static readonly Dictionary<string, string> SameAsNative = new()
    {
        ["alarm"] = "pause=-1 eintr=1 hits=1\n",
        ["itimer"] = "hits=3 interval=20000\n",
        ["segv"] = "segv signo=11 code=1 addr=0x10 rip_set=1\nagain addr=0x20\n",
        ["fpe"] = "fpe signo=8 code=1 addr_is_rip=1\n",
        ["raise"] = "raise hits=1 signo=10 code=-6 pid_ok=1\nkill hits=2 signo=12 code=0 pid_ok=1\n",
        ["altstack"] = "onstack=1 offstack=1 hits=2\n",
        ["pending"] = "before=0 pending=1 after=1\n",
        ["sleep"] = "nanosleep=-1 eintr=1 rem_ok=1 hits=1\n",
        ["suspend"] = "sigsuspend=-1 eintr=1 hits=1 still_blocked=1\n",
        ["resethand"] = "hits=1 reset=1\n",
        ["restart"] = "restart read=1 hits=2; plain read=-1 eintr=1\n",
        ["sigchld"] = "sigchld waited=1 status=3 hits=1 code=1 pid_ok=1 si_status=3\n",
        ["vdso"] = "clock=1 getcpu=0 cpu_ok=1 einval=1 fails=0\n",
    };

    public static TheoryData<string, BackendKind> Scenarios => BackendCases.OnBothBackends(SameAsNative.Keys);

    public static TheoryData<BackendKind> Backends => [BackendKind.Kvm, BackendKind.Interpreter];

    private static async Task<SandboxResult> RunAsync(BackendKind backend, params string[] args)
    {
        BackendCases.Require(backend);
        await using var sandbox = Sandbox.CreateBuilder().WithExecutable(CPrograms.Get("signals")).WithArguments(args)
            .WithBackend(backend).WithTimeLimit(TimeSpan.FromSeconds(60)).Build();
        var result = await sandbox.RunAsync(default, Ct);
        if (backend == BackendKind.Interpreter && result.Status == SandboxStatus.GuestFault && result.Fault!.Vector == 6)
        {
            Assert.Skip($"Skipped: the interpreter raised #UD on an instruction it does not implement yet: {result.Fault}");
        }

        return result;
    }

    private static string Describe(SandboxResult result) =>
        $"{result.Status} exit={result.ExitCode} signal={result.Signal} {result.Message}\nstdout: {result.StdoutText}\nstderr: {result.StderrText}\nunsupported: {string.Join(",", result.UnsupportedSystemCalls)}";

    [Theory]
    [MemberData(nameof(Scenarios))]
    public async Task Signal_scenario_matches_native(string scenario, BackendKind backend)
    {
        var result = await RunAsync(backend, scenario);
        Assert.True(result.Status == SandboxStatus.Exited && result.ExitCode == 0, Describe(result));
        Assert.Equal(SameAsNative[scenario], result.StdoutText);
        var native = CPrograms.Run(CPrograms.PathOf("signals"), scenario);
        Assert.Equal(0, native.ExitCode);
        Assert.Equal(native.Output, result.StdoutText);
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public async Task Static_glibc_calls_getcpu_through_the_vdso_without_a_system_call(BackendKind backend)
    {
        var result = await RunAsync(backend, "vdso");
        Assert.True(result.Status == SandboxStatus.Exited, Describe(result));
        // 1000 sched_getcpu calls: through the vDSO they make no system call at all.
        Assert.True(result.Usage.SystemCalls < 200, $"{result.Usage.SystemCalls} system calls\n{Describe(result)}");
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public async Task Default_action_of_SIGTERM_ends_the_run_and_names_the_signal(BackendKind backend)
    {
        var result = await RunAsync(backend, "term");
        Assert.True(result.Status == SandboxStatus.Signaled && result.Signal == 15, Describe(result));
        Assert.Contains("SIGTERM", result.Message, StringComparison.Ordinal);
        Assert.Equal("terminating\n", result.StdoutText);
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public async Task Forged_sigreturn_flags_and_selectors_do_not_reach_the_processor(BackendKind backend)
    {
        // The handler asks for kernel CS, IOPL 3, NT, VM and IF clear; the program must come back at CPL 3 with none of it.
        var result = await RunAsync(backend, "forge");
        Assert.True(result.Status == SandboxStatus.Exited && result.ExitCode == 0, Describe(result));
        Assert.Equal("hits=1 cpl=3 iopl=0 nt=0 vm=0 if=1\n", result.StdoutText);
    }

    [Theory]
    [InlineData("forge-rip", BackendKind.Kvm)]
    [InlineData("forge-rip", BackendKind.Interpreter)]
    [InlineData("forge-mxcsr", BackendKind.Kvm)]
    [InlineData("forge-mxcsr", BackendKind.Interpreter)]
    public async Task Forged_sigreturn_frame_ends_the_program_with_SIGSEGV(string scenario, BackendKind backend)
    {
        // A kernel-half RIP, or MXCSR reserved bits that would make FXRSTOR fault in supervisor code: the frame is refused.
        var result = await RunAsync(backend, scenario);
        Assert.True(result.Status == SandboxStatus.Signaled && result.Signal == 11, Describe(result));
        Assert.Contains("rt_sigreturn", result.Message, StringComparison.Ordinal);
        Assert.Equal("forging\n", result.StdoutText);

        // The machine is not hurt: the next program on the same backend runs.
        var next = await RunAsync(backend, "raise");
        Assert.True(next.Status == SandboxStatus.Exited, Describe(next));
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public async Task Busybox_trap_runs_on_a_signal_the_shell_sends_itself(BackendKind backend)
    {
        BackendCases.Require(backend);
        string busybox = Busybox.PathOrSkip();
        const string Script = "trap \"echo got\" USR1; kill -USR1 $$; echo after";
        var native = CPrograms.Run(busybox, ["sh", "-c", Script]);
        Assert.Equal(0, native.ExitCode);
        await using var sandbox = Sandbox.CreateBuilder().WithExecutable(busybox).WithExecutablePath("/bin/busybox")
            .WithExecutableAliases("/bin/sh").WithArguments("sh", "-c", Script).WithBackend(backend).WithTimeLimit(TimeSpan.FromSeconds(60)).Build();
        var result = await sandbox.RunAsync(default, Ct);
        Assert.True(result.Status == SandboxStatus.Exited && result.ExitCode == 0, Describe(result));
        Assert.Equal("got\nafter\n", native.Output);
        Assert.Equal(native.Output, result.StdoutText);
    }
}
