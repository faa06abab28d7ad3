using Iced.Intel;
using Virt.Testing;
using Xunit;
using static Iced.Intel.AssemblerRegisters;

namespace Virt.Sandbox.Tests;

public sealed class KvmSmokeTests
{
    [Fact]
    public async Task Tiny_program_writes_to_stdout_and_exits_with_its_code()
    {
        HostRequirements.RequireKvm();
        var message = "hello\n"u8.ToArray();
        var elf = TinyElf.Build(a =>
        {
            a.mov(eax, 1);
            a.mov(edi, 1);
            a.mov(rsi, TinyElf.DataAddress);
            a.mov(edx, message.Length);
            a.syscall();
            a.mov(eax, 231);
            a.mov(edi, 42);
            a.syscall();
            a.hlt();
        }, message);
        await using var sandbox = Sandbox.CreateBuilder().WithExecutable(elf).WithBackend(BackendKind.Kvm).Build();
        var result = await sandbox.RunAsync(default, TestContext.Current.CancellationToken);
        Assert.True(result.Status == SandboxStatus.Exited, result + " " + result.Message);
        Assert.Equal(42, result.ExitCode);
        Assert.Equal("hello\n", result.StdoutText);
    }
}
