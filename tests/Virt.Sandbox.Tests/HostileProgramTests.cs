using Iced.Intel;
using Virt.Sandbox.Machine;
using Virt.Testing;
using Xunit;
using static Iced.Intel.AssemblerRegisters;

namespace Virt.Sandbox.Tests;

/// <summary>Programs that attack the sandbox; each must end its own run with a reason, never hurt the host.</summary>
public sealed class HostileProgramTests
{
    private const ulong SupervisorCode = 0xFFFF_FFFF_8000_3000;
    private const ulong SupervisorGdt = 0xFFFF_FFFF_8000_1000;

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private static async Task<SandboxResult> RunAsm(Action<Assembler> emit, Func<SandboxBuilder, SandboxBuilder>? configure = null)
    {
        var builder = Sandbox.CreateBuilder().WithExecutable(TinyElf.Build(emit, new byte[64])).WithBackend(BackendKind.Kvm)
            .WithTimeLimit(TimeSpan.FromSeconds(20));
        await using var sandbox = (configure?.Invoke(builder) ?? builder).Build();
        return await sandbox.RunAsync(default, Ct);
    }

    private static void AssertFault(SandboxResult result, int vector, string bytesPrefix)
    {
        Assert.True(result.Status == SandboxStatus.GuestFault, $"{result} {result.Message}");
        Assert.Equal(vector, result.Fault!.Vector);
        Assert.StartsWith(bytesPrefix, Convert.ToHexString(result.Fault.InstructionBytes.Span), StringComparison.Ordinal);
        Assert.True(result.Fault.Rip >= TinyElf.CodeAddress && result.Fault.Rip < TinyElf.CodeAddress + 0x1000, $"rip 0x{result.Fault.Rip:x}");
    }

    [Fact]
    public async Task Infinite_loop_is_stopped_by_the_time_limit()
    {
        HostRequirements.RequireKvm();
        var result = await RunAsm(a =>
        {
            var top = a.CreateLabel();
            a.Label(ref top);
            a.inc(rax);
            a.jmp(top);
        }, b => b.WithTimeLimit(TimeSpan.FromMilliseconds(300)));
        Assert.Equal(SandboxStatus.TimeLimitExceeded, result.Status);
    }

    [Fact]
    public async Task Hlt_at_cpl3_is_a_general_protection_fault()
    {
        HostRequirements.RequireKvm();
        AssertFault(await RunAsm(a => a.hlt()), 13, "F4");
    }

    [Fact]
    public async Task Cli_at_cpl3_is_a_general_protection_fault()
    {
        HostRequirements.RequireKvm();
        AssertFault(await RunAsm(a => a.cli()), 13, "FA");
    }

    [Fact]
    public async Task Wrmsr_at_cpl3_is_a_general_protection_fault()
    {
        HostRequirements.RequireKvm();
        AssertFault(await RunAsm(a =>
        {
            a.mov(ecx, 0xC0000082);
            a.xor(eax, eax);
            a.xor(edx, edx);
            a.wrmsr();
        }), 13, "0F30");
    }

    [Fact]
    public async Task Out_to_the_system_call_port_at_cpl3_is_a_general_protection_fault()
    {
        HostRequirements.RequireKvm();
        AssertFault(await RunAsm(a => a.@out(0xA6, al)), 13, "E6A6");
    }

    [Fact]
    public async Task Write_to_a_code_page_is_a_page_fault()
    {
        HostRequirements.RequireKvm();
        var result = await RunAsm(a =>
        {
            a.mov(rax, TinyElf.CodeAddress + 0x100);
            a.mov(__byte_ptr[rax], 0x90);
        });
        AssertFault(result, 14, "C600");
        Assert.Equal(TinyElf.CodeAddress + 0x100, result.Fault!.FaultAddress);
        Assert.Equal(7UL, result.Fault.ErrorCode & 7); // present, write, user
    }

    [Fact]
    public async Task Executing_the_stack_is_a_page_fault()
    {
        HostRequirements.RequireKvm();
        var result = await RunAsm(a =>
        {
            a.mov(__dword_ptr[rsp - 16], 0x90909090);
            a.lea(rax, __[rsp - 16]);
            a.jmp(rax);
        });
        Assert.Equal(SandboxStatus.GuestFault, result.Status);
        Assert.Equal(14, result.Fault!.Vector);
        Assert.Equal(0x10UL, result.Fault.ErrorCode & 0x10); // instruction fetch
    }

    [Fact]
    public async Task Jump_into_supervisor_code_is_a_page_fault()
    {
        HostRequirements.RequireKvm();
        var result = await RunAsm(a =>
        {
            a.mov(rax, SupervisorCode);
            a.jmp(rax);
        });
        Assert.Equal(SandboxStatus.GuestFault, result.Status);
        Assert.Equal(14, result.Fault!.Vector);
        Assert.Equal(SupervisorCode, result.Fault.Rip);
        Assert.Empty(result.Fault.InstructionBytes.ToArray());
    }

    [Fact]
    public async Task Reading_the_gdt_is_a_page_fault()
    {
        HostRequirements.RequireKvm();
        var result = await RunAsm(a =>
        {
            a.mov(rax, SupervisorGdt);
            a.mov(rbx, __qword_ptr[rax]);
        });
        AssertFault(result, 14, "488B18");
        Assert.Equal(SupervisorGdt, result.Fault!.FaultAddress);
    }

    [Fact]
    public async Task Writing_low_physical_memory_where_the_page_tables_live_is_a_page_fault()
    {
        HostRequirements.RequireKvm();
        var result = await RunAsm(a =>
        {
            a.mov(rax, 0x6000UL);
            a.mov(__qword_ptr[rax], rax);
        });
        AssertFault(result, 14, "488900");
    }

    [Fact]
    public async Task Int_0x80_is_a_fault_at_its_own_address()
    {
        HostRequirements.RequireKvm();
        var result = await RunAsm(a => a.@int(0x80));

        // #GP on hardware (no gate 0x80); PVM-style KVMs report #UD for software interrupts from CPL 3.
        Assert.True(result.Status == SandboxStatus.GuestFault && result.Fault!.Vector is 13 or 6, $"{result}");
        Assert.StartsWith("CD80", Convert.ToHexString(result.Fault!.InstructionBytes.Span), StringComparison.Ordinal);
    }

    [Fact]
    public async Task Divide_by_zero_is_reported_as_de_with_sigfpe()
    {
        HostRequirements.RequireKvm();
        var result = await RunAsm(a =>
        {
            a.xor(ecx, ecx);
            a.div(ecx);
        });
        AssertFault(result, 0, "F7F1");
        Assert.Equal(8, result.Signal);
    }

    [Fact]
    public async Task Jumping_to_the_trampoline_with_a_kernel_return_address_faults_at_cpl3()
    {
        HostRequirements.RequireKvm();
        var result = await RunAsm(a =>
        {
            a.mov(rcx, 0xFFFF_FFFF_8000_3000UL);
            a.mov(r11, 0x3202UL); // IOPL 3 asked for
            a.mov(eax, 39);
            a.mov(rdx, GuestLayout.TrampolineAddress);
            a.jmp(rdx);
        });

        // Where the trampoline serves the call it returns with jmp rcx at CPL 3; otherwise its code is just executed.
        Assert.True(result.Status == SandboxStatus.GuestFault, $"{result}");
        Assert.Equal(14, result.Fault!.Vector);
        Assert.Equal(0xFFFF_FFFF_8000_3000UL, result.Fault.Rip);
        Assert.Equal(0x4UL, result.Fault.ErrorCode & 0x4); // a user-mode access
    }

    [Fact]
    public async Task Reading_the_doorbell_outside_the_trampoline_is_forbidden()
    {
        HostRequirements.RequireKvm();
        var result = await RunAsm(a =>
        {
            a.mov(rdx, 0x7FFF_FFFF_E000UL);
            a.mov(rax, __qword_ptr[rdx]);
        });
        Assert.Equal(SandboxStatus.ForbiddenOperation, result.Status);
    }

    [Fact]
    public async Task Jumping_to_the_trampoline_cannot_raise_iopl()
    {
        HostRequirements.RequireKvm();
        var result = await RunAsm(a =>
        {
            var back = a.CreateLabel();
            a.lea(rcx, __[back]);
            a.mov(r11, 0x3202UL); // IOPL 3 asked for
            a.mov(eax, 39); // getpid
            a.mov(rdx, GuestLayout.TrampolineAddress);
            a.jmp(rdx);
            a.Label(ref back);
            a.@out(0x80, al); // faults unless IOPL was raised
        });
        AssertFault(result, 13, "E680");
    }

    /// <summary>
    /// A seeded xorshift stream of system call numbers (0-511, past the end of the table too) and arguments, half of
    /// the first arguments small (a plausible descriptor or flag). 30,000 calls reach every number about 60 times with
    /// different arguments. The deliberate cases have tests of their own in this class (unlisted, denied and
    /// out-of-range numbers, the system call, output and memory limits).
    /// </summary>
    [Fact]
    public async Task Syscall_fuzz_of_30000_random_calls_ends_cleanly()
    {
        HostRequirements.RequireKvm();
        const int calls = 30_000;
        // The time limit only guards against a hang.
        var result = await RunAsm(a =>
        {
            var loop = a.CreateLabel();
            var skip = a.CreateLabel();
            var done = a.CreateLabel();
            a.mov(r12d, calls);
            a.mov(r13, 0x9E3779B97F4A7C15UL);
            a.Label(ref loop);
            void Next(AssemblerRegister64 target)
            {
                // xorshift64
                a.mov(rax, r13);
                a.shl(rax, 13);
                a.xor(r13, rax);
                a.mov(rax, r13);
                a.shr(rax, 7);
                a.xor(r13, rax);
                a.mov(rax, r13);
                a.shl(rax, 17);
                a.xor(r13, rax);
                a.mov(target, r13);
            }

            Next(rdi);
            Next(rsi);
            Next(rdx);
            Next(r10);
            Next(r8);
            Next(r9);
            Next(rbx);
            // Half the time, make the first argument small (a plausible fd or flag).
            a.test(ebx, 0x100);
            var keep = a.CreateLabel();
            a.jz(keep);
            a.and(edi, 7);
            a.Label(ref keep);
            a.mov(eax, ebx);
            a.and(eax, 511);
            // exit, exit_group, the self-signals, rt_sigreturn (a random frame is SIGSEGV) and the timers (SIGALRM) end a run
            // legitimately, and pause and rt_sigsuspend wait for ever; new processes (clone, fork, vfork, clone3) would
            // each run the rest of the fuzz loop too, multiplying the work (process creation has its own tests).
            foreach (int n in new[] { 60, 231, 62, 200, 234, 15, 34, 37, 38, 130, 56, 57, 58, 435 })
            {
                a.cmp(eax, n);
                a.je(skip);
            }

            a.syscall();
            a.Label(ref skip);
            a.dec(r12d);
            a.jnz(loop);
            a.Label(ref done);
            a.mov(eax, 231);
            a.xor(edi, edi);
            a.syscall();
        }, b => b.WithMemoryLimit(16 << 20).WithTimeLimit(TimeSpan.FromMinutes(10)));
        Assert.True(result.Status == SandboxStatus.Exited, $"{result} {result.Message}");
        Assert.InRange(result.Usage.SystemCalls, calls * 9 / 10, calls + 1); // all but the skipped numbers, and the final exit_group
        Assert.NotEmpty(result.UnsupportedSystemCalls);
    }

    [Fact]
    public async Task Unlisted_denied_and_out_of_range_numbers_fail_and_are_counted_by_name()
    {
        HostRequirements.RequireKvm();
        (ulong Number, int Result)[] calls =
        [
            (153, -38),                   // vhangup: no row, ENOSYS
            (334, -38),                   // rseq: refused on purpose, ENOSYS
            (512, -38),                   // past the x86-64 table
            (ulong.MaxValue, -38),        // -1
            (0x5653_0002, -38),           // past the reserved calls
            (110, 0),                     // getppid still answers
        ];
        var result = await RunAsm(a =>
        {
            // Exits with the 1-based index of the first call that returned something else, 0 when all matched.
            var mismatch = a.CreateLabel();
            for (int i = 0; i < calls.Length; i++)
            {
                a.mov(r12d, i + 1);
                a.mov(rax, calls[i].Number);
                a.syscall();
                a.cmp(rax, calls[i].Result);
                a.jne(mismatch);
            }

            a.xor(r12d, r12d);
            a.Label(ref mismatch);
            a.mov(eax, 231);
            a.mov(edi, r12d);
            a.syscall();
        });
        Assert.True(result.Status == SandboxStatus.Exited, $"{result} {result.Message}");
        Assert.Equal(0, result.ExitCode);
        Assert.Equal(
            new Dictionary<string, int> { ["vhangup"] = 1, ["rseq"] = 1, ["syscall_512"] = 1, ["syscall_-1"] = 1, ["syscall_1448280066"] = 1 },
            result.UnsupportedSystemCalls);
    }

    [Fact]
    public async Task System_call_limit_stops_a_chatty_program()
    {
        HostRequirements.RequireKvm();
        var result = await RunAsm(a =>
        {
            var top = a.CreateLabel();
            a.Label(ref top);
            a.mov(eax, 39);
            a.syscall();
            a.jmp(top);
        }, b => b.WithSystemCallLimit(1000));
        Assert.Equal(SandboxStatus.SyscallLimitExceeded, result.Status);
    }

    [Fact]
    public async Task Output_limit_stops_a_flood()
    {
        HostRequirements.RequireKvm();
        var result = await RunAsm(a =>
        {
            var top = a.CreateLabel();
            a.Label(ref top);
            a.mov(eax, 1);
            a.mov(edi, 1);
            a.mov(rsi, TinyElf.DataAddress);
            a.mov(edx, 64);
            a.syscall();
            a.jmp(top);
        }, b => b.WithOutputLimit(1000));
        Assert.Equal(SandboxStatus.OutputLimitExceeded, result.Status);
        Assert.Equal(1000, result.Stdout.Length);
    }

    [Fact]
    public async Task Memory_bomb_hits_the_memory_limit()
    {
        HostRequirements.RequireKvm();
        await using var sandbox = Sandbox.CreateBuilder().WithExecutable(CPrograms.Get("membomb")).WithBackend(BackendKind.Kvm)
            .WithMemoryLimit(16 << 20).Build();
        var result = await sandbox.RunAsync(default, Ct);
        Assert.True(result.Status == SandboxStatus.MemoryLimitExceeded, $"{result} {result.Message} {result.StderrText}");
        Assert.True(result.Usage.PeakMemoryBytes <= 16 << 20);
    }

    [Fact]
    public async Task Reading_etc_passwd_finds_nothing()
    {
        HostRequirements.RequireKvm();
        await using var sandbox = Sandbox.CreateBuilder().WithExecutable(CPrograms.Get("passwd")).WithBackend(BackendKind.Kvm).Build();
        var result = await sandbox.RunAsync(default, Ct);
        Assert.Equal(SandboxStatus.Exited, result.Status);
        Assert.Equal(1, result.ExitCode);
        Assert.Contains("No such file or directory", result.StderrText, StringComparison.Ordinal);
        Assert.DoesNotContain("root:", result.StdoutText, StringComparison.Ordinal);
    }
}
