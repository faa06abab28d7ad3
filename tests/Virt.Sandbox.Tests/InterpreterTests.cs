using System.Text;
using Xunit;
using static Iced.Intel.AssemblerRegisters;

namespace Virt.Sandbox.Tests;

/// <summary>The same programs on the interpreter backend (no KVM needed).</summary>
public sealed class InterpreterTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    /// <summary>glibc uses SSE early; until the interpreter decodes every such instruction, its #UD is a skip, not a sandbox failure.</summary>
    private static void SkipIfInterpreterLacksInstruction(SandboxResult result)
    {
        if (result.Status == SandboxStatus.GuestFault && result.Fault!.Vector == 6)
        {
            Assert.Skip($"Skipped: the interpreter raised #UD on an instruction it does not implement yet: {result.Fault}");
        }
    }

    [Fact]
    public async Task Tiny_program_runs_on_the_interpreter()
    {
        var message = "hi\n"u8.ToArray();
        var elf = TinyElf.Build(a =>
        {
            a.mov(eax, 1);
            a.mov(edi, 1);
            a.mov(rsi, TinyElf.DataAddress);
            a.mov(edx, message.Length);
            a.syscall();
            a.mov(eax, 231);
            a.mov(edi, 7);
            a.syscall();
        }, message);
        await using var sandbox = Sandbox.CreateBuilder().WithExecutable(elf).WithBackend(BackendKind.Interpreter).Build();
        var result = await sandbox.RunAsync(default, Ct);
        Assert.True(result.Status == SandboxStatus.Exited, $"{result} {result.Message}");
        Assert.Equal(7, result.ExitCode);
        Assert.Equal("hi\n", result.StdoutText);
        Assert.NotNull(result.Usage.Instructions);
    }

    [Fact]
    public async Task Instruction_budget_stops_a_loop_on_the_interpreter()
    {
        var elf = TinyElf.Build(a =>
        {
            var top = a.CreateLabel();
            a.Label(ref top);
            a.jmp(top);
        });
        await using var sandbox = Sandbox.CreateBuilder().WithExecutable(elf).WithBackend(BackendKind.Interpreter).WithInstructionLimit(100_000).Build();
        var result = await sandbox.RunAsync(default, Ct);
        Assert.Equal(SandboxStatus.TimeLimitExceeded, result.Status);
    }

    [Fact]
    public async Task Hello_in_c_runs_on_the_interpreter()
    {
        await using var sandbox = Sandbox.CreateBuilder().WithExecutable(CPrograms.Get("hello")).WithBackend(BackendKind.Interpreter)
            .WithTimeLimit(TimeSpan.FromSeconds(60)).Build();
        var result = await sandbox.RunAsync(default, Ct);
        SkipIfInterpreterLacksInstruction(result);
        Assert.True(result.Status == SandboxStatus.Exited, $"{result} {result.Message} {string.Join(",", result.UnsupportedSystemCalls.Keys)}");
        Assert.Equal("hello, sandbox\n", result.StdoutText);
    }

    [Fact]
    public async Task Warm_echo_resets_on_the_interpreter()
    {
        await using var sandbox = Sandbox.CreateBuilder().WithExecutable(CPrograms.Get("echo")).WithBackend(BackendKind.Interpreter)
            .WithTimeLimit(TimeSpan.FromSeconds(60)).Build();
        for (int i = 0; i < 3; i++)
        {
            var input = Encoding.ASCII.GetBytes($"interp {i}");
            var result = await sandbox.RunAsync(input, Ct);
            SkipIfInterpreterLacksInstruction(result);
            Assert.True(result.Status == SandboxStatus.Exited, $"{result} {result.Message}");
            Assert.Equal(input, result.Stdout.ToArray());
        }
    }
}
