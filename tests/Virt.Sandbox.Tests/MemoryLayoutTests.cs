using Virt.Testing;
using Xunit;
using static Iced.Intel.AssemblerRegisters;

namespace Virt.Sandbox.Tests;

/// <summary>The stack guard, mprotect's answers, the memory-limit status and the memory-limit bounds.</summary>
public sealed class MemoryLayoutTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private static SandboxBuilder Recurse(long kib) => Sandbox.CreateBuilder().WithExecutable(CPrograms.Get("recurse"))
        .WithArguments(kib.ToString(System.Globalization.CultureInfo.InvariantCulture)).WithBackend(BackendKind.Kvm)
        .WithTimeLimit(TimeSpan.FromSeconds(20));

    [Fact]
    public async Task Three_MiB_of_recursion_fits_the_default_stack_as_it_does_natively()
    {
        HostRequirements.RequireKvm();
        await using var sandbox = Recurse(3 * 1024).Build();
        var result = await sandbox.RunAsync(default, Ct);
        Assert.True(result.Status == SandboxStatus.Exited && result.ExitCode == 0, $"{result} {result.Message} {result.StdoutText}");
        Assert.StartsWith("depth 3072 ok", result.StdoutText, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Stack_overflow_ends_in_sigsegv_at_the_guard_instead_of_overwriting_the_heap()
    {
        HostRequirements.RequireKvm();
        await using var sandbox = Recurse(64 * 1024).Build();
        var result = await sandbox.RunAsync(default, Ct);
        Assert.True(result.Status == SandboxStatus.GuestFault, $"{result} {result.Message} {result.StdoutText}");
        Assert.Equal(11, result.Signal);
        Assert.Equal(14, result.Fault!.Vector);
        Assert.Contains("overflowed its", result.Message, StringComparison.Ordinal);
        Assert.DoesNotContain("corrupted", result.StdoutText, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_smaller_stack_overflows_sooner_and_says_how_to_raise_it()
    {
        HostRequirements.RequireKvm();
        await using var sandbox = Recurse(512).WithStackSize(256 * 1024).Build();
        var result = await sandbox.RunAsync(default, Ct);
        Assert.True(result.Status == SandboxStatus.GuestFault, $"{result} {result.Message}");
        Assert.Contains("WithStackSize", result.Message, StringComparison.Ordinal);
        Assert.Contains("262144-byte stack", result.Message, StringComparison.Ordinal);
    }

    /// <summary>mmap(PROT_READ|PROT_WRITE), then mprotect with <paramref name="prot"/> on it (or on an unmapped page); the result is the exit code.</summary>
    private static byte[] MprotectProgram(int prot, bool unmappedTarget) => TinyElf.Build(a =>
    {
        a.mov(eax, 9);                 // mmap(0, 4096, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0)
        a.xor(edi, edi);
        a.mov(esi, 4096);
        a.mov(edx, 3);
        a.mov(r10d, 0x22);
        a.mov(r8, -1);
        a.xor(r9d, r9d);
        a.syscall();
        a.mov(rdi, rax);
        if (unmappedTarget)
        {
            a.mov(rdi, 0x1000_0000);   // nothing is mapped there
        }

        a.mov(eax, 10);                // mprotect(addr, 4096, prot)
        a.mov(esi, 4096);
        a.mov(edx, prot);
        a.syscall();
        a.neg(eax);                    // exit(errno) (0 on success)
        a.mov(edi, eax);
        a.mov(eax, 231);
        a.syscall();
    });

    [Theory]
    [InlineData(1, false, 0)]          // PROT_READ: fewer permissions are accepted
    [InlineData(3, false, 0)]          // PROT_READ|PROT_WRITE: what the page has
    [InlineData(7, false, 1)]          // +PROT_EXEC: refused with EPERM, as mmap refuses it
    [InlineData(5, false, 1)]          // PROT_READ|PROT_EXEC: EPERM too
    [InlineData(1, true, 12)]          // an unmapped page: ENOMEM, as on Linux
    public async Task Mprotect_answers_like_mmap_for_what_the_page_tables_cannot_give(int prot, bool unmapped, int errno)
    {
        HostRequirements.RequireKvm();
        await using var sandbox = Sandbox.CreateBuilder().WithExecutable(MprotectProgram(prot, unmapped)).WithBackend(BackendKind.Kvm).Build();
        var result = await sandbox.RunAsync(default, Ct);
        Assert.True(result.Status == SandboxStatus.Exited, $"{result} {result.Message}");
        Assert.Equal(errno, result.ExitCode);
    }

    [Fact]
    public async Task A_fault_after_a_refused_allocation_is_reported_as_the_fault()
    {
        HostRequirements.RequireKvm();
        var elf = TinyElf.Build(a =>
        {
            a.mov(eax, 9);             // mmap 1 GiB: more than the limit, refused
            a.xor(edi, edi);
            a.mov(esi, 1 << 30);
            a.mov(edx, 3);
            a.mov(r10d, 0x22);
            a.mov(r8, -1);
            a.xor(r9d, r9d);
            a.syscall();
            a.mov(__qword_ptr[0x10], rax);  // then a fault of its own: a write to an unmapped page
            a.hlt();
        });
        await using var sandbox = Sandbox.CreateBuilder().WithExecutable(elf).WithBackend(BackendKind.Kvm).WithMemoryLimit(16 << 20).Build();
        var result = await sandbox.RunAsync(default, Ct);
        Assert.True(result.Status == SandboxStatus.GuestFault, $"{result} {result.Message}");
        Assert.Equal(14, result.Fault!.Vector);
        Assert.Equal(0x10UL, result.Fault.FaultAddress);
        Assert.True(result.MemoryLimitReached);
        Assert.Contains("refused", result.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Memory_limits_past_what_every_backend_can_map_are_refused_when_set()
    {
        var builder = Sandbox.CreateBuilder();
        var ex = Assert.Throws<ArgumentOutOfRangeException>(() => builder.WithMemoryLimit(4UL << 30));
        Assert.Contains("4064 MiB", ex.Message, StringComparison.Ordinal);
        Assert.Throws<ArgumentOutOfRangeException>(() => builder.WithMemoryLimit(SandboxBuilder.MaxMemoryLimit + 4096));
        builder.WithMemoryLimit(SandboxBuilder.MaxMemoryLimit);
    }

    [Fact]
    public async Task The_largest_memory_limit_runs_on_kvm()
    {
        HostRequirements.RequireKvm();
        await using var sandbox = Sandbox.CreateBuilder().WithExecutable(CPrograms.Get("hello")).WithBackend(BackendKind.Kvm)
            .WithMemoryLimit(SandboxBuilder.MaxMemoryLimit).WithTimeLimit(TimeSpan.FromSeconds(60)).Build();
        var result = await sandbox.RunAsync(default, Ct);
        Assert.True(result.Status == SandboxStatus.Exited && result.ExitCode == 0, $"{result} {result.Message}");
        Assert.Equal("hello, sandbox\n", result.StdoutText);
    }
}
