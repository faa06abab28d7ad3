using Iced.Intel;
using Virt.Boot;
using Virt.Testing;
using static Iced.Intel.AssemblerRegisters;

namespace Virt.Cpu.Interpreter.Tests.Platform;

/// <summary>The interpreter's own interrupt controllers, timers, virtual TSC and HLT.</summary>
public sealed class PlatformTests
{
    private const ulong Code = 0x10000;
    private const ulong Handler = 0x20000;
    private const ulong Idt = 0x3000;
    private const ulong Lapic = 0xFEE00000;
    private const ulong IoApic = 0xFEC00000;
    private const int TimerVector = 0x40;
    private const long Tsc = 1_000_000_000;

    private sealed class PlatformMachine : IDisposable
    {
        public PlatformMachine(long instructionsPerSecond = 100_000_000, InterpreterClock clock = InterpreterClock.Virtual, bool? jit = null)
        {
            Memory = Virt.Memory.GuestMemory.CreateRam(4UL << 20);
            var options = new InterpreterOptions { TscFrequency = Tsc, InstructionsPerSecond = instructionsPerSecond, Clock = clock };
            if (jit is bool compiled)
            {
                options = options with { EnableJit = compiled, JitThreshold = 0 };
            }

            Partition = new InterpreterHypervisor(options)
                .CreatePartition(Memory, new PartitionOptions { InterruptController = true, InterruptPlatform = Virt.Devices.Interrupts.PcInterruptPlatform.Factory });
            Vcpu = Partition.CreateVcpu(0);
        }

        public Virt.Memory.GuestMemory Memory { get; }

        public IPartition Partition { get; }

        public IVirtualCpu Vcpu { get; }

        /// <summary>Loads <paramref name="code"/> and an interrupt handler (<paramref name="handler"/>, used for every vector 32-255) and starts in long mode.</summary>
        public void Start(Action<Assembler> code, Action<Assembler> handler)
        {
            Memory.Write(new GuestAddress(Code), GuestProgram.Assemble(64, Code, code));
            Memory.Write(new GuestAddress(Handler), GuestProgram.Assemble(64, Handler, handler));
            for (int v = 32; v < 256; v++)
            {
                ulong low = (Handler & 0xFFFF) | ((ulong)ProcessorSetup.KernelCode64 << 16) | (0x8EUL << 40) | (((Handler >> 16) & 0xFFFF) << 48);
                Memory.Write(new GuestAddress(Idt + (ulong)(v * 16)), low);
                Memory.Write(new GuestAddress(Idt + (ulong)(v * 16) + 8), Handler >> 32);
            }

            var s = ProcessorSetup.Prepare(Memory, Vcpu.GetSpecialRegisters(), StartMode.Long64, new ProcessorSetupOptions());
            s.Idt = new DescriptorTable { Base = Idt, Limit = (256 * 16) - 1 };
            Vcpu.SetSpecialRegisters(s);
            Vcpu.SetGeneralRegisters(new GeneralRegisters { Rip = Code, Rsp = 0x8000, Rflags = 0x2 });
        }

        public VcpuExit RunToExit()
        {
            ((IInstructionCounting)Vcpu).InstructionBudget = 50_000_000; // a broken timer ends the test instead of hanging it
            return Vcpu.Run();
        }

        public void Dispose()
        {
            Vcpu.Dispose();
            Partition.Dispose();
            Memory.Dispose();
        }
    }

    /// <summary>Handler: counts in R15, EOIs the local APIC, returns.</summary>
    private static void CountAndApicEoi(Assembler a)
    {
        a.inc(r15);
        a.push(rdi);
        a.mov(rdi, Lapic);
        a.mov(__dword_ptr[rdi + 0xB0], 0);
        a.pop(rdi);
        a.iretq();
    }

    /// <summary>Guest tail: halts until R15 reaches <paramref name="count"/>, then CLI; HLT.</summary>
    private static void WaitForCount(Assembler a, int count)
    {
        HaltUntilCount(a, count);
        a.hlt();
    }

    /// <summary>STI, then halts until R15 reaches <paramref name="count"/>, then CLI.</summary>
    private static void HaltUntilCount(Assembler a, int count)
    {
        a.sti();
        var loop = a.CreateLabel();
        a.Label(ref loop);
        a.hlt();
        a.cmp(r15, count);
        a.jb(loop);
        a.cli();
    }

    /// <summary>Enables the local APIC, arms its timer once for <paramref name="count"/> ticks (divide by 1) on <see cref="TimerVector"/>, and STI.</summary>
    private static void ArmOneShotApicTimer(Assembler a, int count)
    {
        EnableApic(a);
        a.mov(rdi, Lapic);
        a.mov(__dword_ptr[rdi + 0x3E0], 0xB); // divide by 1
        a.mov(rdi, Lapic);
        a.mov(__dword_ptr[rdi + 0x320], TimerVector);
        a.mov(rdi, Lapic);
        a.mov(__dword_ptr[rdi + 0x380], count);
        a.sti();
    }

    private static void EnableApic(Assembler a)
    {
        a.mov(rdi, Lapic);
        a.mov(__dword_ptr[rdi + 0xF0], 0x1FF); // SVR: software enable, spurious vector 0xFF
    }

    [Fact]
    public void Pit_mode_2_through_the_pic_interrupts_a_halted_guest_periodically()
    {
        using var m = new PlatformMachine();
        m.Start(
            a =>
            {
                a.xor(r15, r15);
                // PIC: master vectors 0x20-0x27, slave 0x28-0x2F, only IRQ 0 unmasked.
                foreach (var (port, value) in new (int, int)[] { (0x20, 0x11), (0x21, 0x20), (0x21, 0x04), (0x21, 0x01), (0x21, 0xFE), (0xA0, 0x11), (0xA1, 0x28), (0xA1, 0x02), (0xA1, 0x01), (0xA1, 0xFF) })
                {
                    a.mov(al, (byte)value);
                    a.@out((byte)port, al);
                }

                // PIT channel 0, low/high byte, mode 2, divisor 1193 (about 1 ms).
                a.mov(al, 0x34);
                a.@out(0x43, al);
                a.mov(al, 1193 & 0xFF);
                a.@out(0x40, al);
                a.mov(al, 1193 >> 8);
                a.@out(0x40, al);
                WaitForCount(a, 5);
            },
            a =>
            {
                a.inc(r15);
                a.mov(al, 0x20);
                a.@out(0x20, al); // non-specific EOI
                a.iretq();
            });

        var exit = m.RunToExit();

        Assert.Equal(VcpuExitReason.Halt, exit.Reason);
        Assert.Equal(5UL, m.Vcpu.GetGeneralRegisters().R15);
    }

    [Theory]
    [InlineData("one-shot", InterpreterClock.Virtual)]
    [InlineData("periodic", InterpreterClock.Virtual)]
    [InlineData("tsc-deadline", InterpreterClock.Virtual)]
    [InlineData("one-shot", InterpreterClock.Host)]
    [InlineData("periodic", InterpreterClock.Host)]
    [InlineData("tsc-deadline", InterpreterClock.Host)]
    public void Local_apic_timer_interrupts_a_halted_guest_in_each_mode(string mode, InterpreterClock clock)
    {
        using var m = new PlatformMachine(clock: clock);
        int expected = mode == "periodic" ? 4 : 1;
        m.Start(
            a =>
            {
                a.xor(r15, r15);
                EnableApic(a);
                a.mov(rdi, Lapic);
                a.mov(__dword_ptr[rdi + 0x3E0], 0xB); // divide by 1
                switch (mode)
                {
                    case "one-shot":
                        a.mov(rdi, Lapic);
                        a.mov(__dword_ptr[rdi + 0x320], TimerVector);
                        a.mov(rdi, Lapic);
                        a.mov(__dword_ptr[rdi + 0x380], 100_000);
                        break;
                    case "periodic":
                        a.mov(rdi, Lapic);
                        a.mov(__dword_ptr[rdi + 0x320], TimerVector | (1 << 17));
                        a.mov(rdi, Lapic);
                        a.mov(__dword_ptr[rdi + 0x380], 100_000);
                        break;
                    default:
                        a.mov(rdi, Lapic);
                        a.mov(__dword_ptr[rdi + 0x320], TimerVector | (2 << 17));
                        a.rdtsc();
                        a.shl(rdx, 32);
                        a.or(rax, rdx);
                        a.add(rax, 1_000_000);
                        a.mov(rdx, rax);
                        a.shr(rdx, 32);
                        a.mov(ecx, 0x6E0);
                        a.wrmsr();
                        break;
                }

                WaitForCount(a, expected);
            },
            CountAndApicEoi);

        var exit = m.RunToExit();

        Assert.Equal(VcpuExitReason.Halt, exit.Reason);
        ulong count = m.Vcpu.GetGeneralRegisters().R15;
        if (clock == InterpreterClock.Host && mode == "periodic")
        {
            // In host time more periods may end between the last counted interrupt and the guest's CLI.
            Assert.True(count >= (ulong)expected, $"{count} periodic interrupts, expected at least {expected}");
        }
        else
        {
            Assert.Equal((ulong)expected, count);
        }
    }

    [Fact]
    public void Local_apic_timer_interrupts_a_compiled_busy_loop_at_the_same_instruction_as_the_first_tier()
    {
        AssertTimerInterruptLandsAsInTheFirstTier(a =>
        {
            a.xor(r15, r15);
            a.xor(eax, eax);
            ArmOneShotApicTimer(a, 100_000);
            var loop = a.CreateLabel();
            a.Label(ref loop);
            a.add(rax, 1);
            a.cmp(r15, 0);
            a.je(loop);
            a.cli();
            a.hlt();
        });
    }

    [Fact]
    public void Local_apic_timer_interrupts_chained_compiled_blocks_at_the_same_instruction_as_the_first_tier()
    {
        // The busy loop calls a function on another page, so it is three compiled blocks entered through each other's
        // links (no region, no self-loop): each exit checks the timer before it enters the next block.
        AssertTimerInterruptLandsAsInTheFirstTier(a =>
        {
            var loop = a.CreateLabel();
            var f = a.CreateLabel();
            a.xor(r15, r15);
            a.xor(eax, eax);
            a.xor(ebx, ebx);
            ArmOneShotApicTimer(a, 100_003);
            a.Label(ref loop);
            a.add(rax, 1);
            a.call(f);
            a.cmp(r15, 0);
            a.je(loop);
            a.cli();
            a.hlt();
            a.db(new byte[4096]);
            a.Label(ref f);
            a.add(rbx, 1);
            a.ret();
        });
    }

    /// <summary>
    /// Runs <paramref name="program"/> (a busy loop counting in RAX until the timer's handler, <see cref="CountAndApicEoi"/>,
    /// counts one interrupt in R15) to its halt in the first tier and with the JIT: the interrupt lands after more than
    /// 1,000 passes, and both end with the same registers and instruction count.
    /// </summary>
    private static void AssertTimerInterruptLandsAsInTheFirstTier(Action<Assembler> program)
    {
        (GeneralRegisters Regs, long Retired) Run(bool jit)
        {
            using var m = new PlatformMachine(jit: jit);
            m.Start(program, CountAndApicEoi);
            var exit = m.RunToExit();
            Assert.Equal(VcpuExitReason.Halt, exit.Reason);
            return (m.Vcpu.GetGeneralRegisters(), ((IInstructionCounting)m.Vcpu).InstructionsRetired);
        }

        var first = Run(jit: false);
        var compiled = Run(jit: true);
        Assert.Equal(1UL, first.Regs.R15);
        Assert.True(first.Regs.Rax > 1000, $"{first.Regs.Rax} iterations before the interrupt");
        Assert.Equal(first, compiled);
    }

    [Fact]
    public void Ioapic_routes_a_device_line_raised_through_the_partition()
    {
        using var m = new PlatformMachine();
        const int pin = 5;
        m.Start(
            a =>
            {
                a.xor(r15, r15);
                EnableApic(a);
                // IOREGSEL/IOWIN: redirection entry for the pin, vector 0x51, fixed, edge, physical APIC 0.
                a.mov(rdi, IoApic);
                a.mov(__dword_ptr[rdi], 0x10 + (pin * 2));
                a.mov(rdi, IoApic);
                a.mov(__dword_ptr[rdi + 0x10], 0x51);
                a.mov(rdi, IoApic);
                a.mov(__dword_ptr[rdi], 0x10 + (pin * 2) + 1);
                a.mov(rdi, IoApic);
                a.mov(__dword_ptr[rdi + 0x10], 0);
                a.mov(eax, 0xC0DE);
                a.hlt(); // IF=0: the host sees this halt, raises the line and runs on
                WaitForCount(a, 1);
            },
            a =>
            {
                a.mov(r14, __qword_ptr[rsp]); // the interrupted RIP
                CountAndApicEoi(a);
            });

        var first = m.RunToExit();
        Assert.Equal(VcpuExitReason.Halt, first.Reason);
        Assert.Equal(0xC0DEUL, m.Vcpu.GetGeneralRegisters().Rax);

        m.Partition.SetInterruptLine(pin, true);
        m.Partition.SetInterruptLine(pin, false);
        var exit = m.RunToExit();

        Assert.Equal(VcpuExitReason.Halt, exit.Reason);
        Assert.Equal(1UL, m.Vcpu.GetGeneralRegisters().R15);
    }

    [Fact]
    public void Rdtsc_is_monotonic_and_advances_at_the_cpuid_0x15_rate()
    {
        using var m = new PlatformMachine(instructionsPerSecond: 100_000_000);
        m.Start(
            a =>
            {
                a.mov(eax, 0x15);
                a.xor(ecx, ecx);
                a.cpuid();
                a.mov(r8d, eax); // denominator
                a.mov(r9d, ebx); // numerator
                a.mov(r10d, ecx); // crystal Hz
                a.rdtsc();
                a.shl(rdx, 32);
                a.or(rax, rdx);
                a.mov(r11, rax);
                a.mov(r12, rax); // previous
                a.xor(r13, r13); // non-monotonic count
                a.mov(rcx, 100_000);
                var loop = a.CreateLabel();
                var ok = a.CreateLabel();
                a.Label(ref loop);
                a.rdtsc();
                a.shl(rdx, 32);
                a.or(rax, rdx);
                a.cmp(rax, r12);
                a.jae(ok);
                a.inc(r13);
                a.Label(ref ok);
                a.mov(r12, rax);
                a.dec(rcx);
                a.jnz(loop);
                a.sub(r12, r11);
                a.cli();
                a.hlt();
            },
            a => a.iretq());

        var exit = m.RunToExit();
        var r = m.Vcpu.GetGeneralRegisters();

        Assert.Equal(VcpuExitReason.Halt, exit.Reason);
        Assert.Equal(0UL, r.R13);
        long reported = (long)(r.R10 * r.R9 / r.R8);
        Assert.Equal(Tsc, reported);

        // 100 000 iterations of 8 instructions at 100 M instructions per virtual second, at the reported TSC rate.
        double elapsedSeconds = (double)r.R12 / reported;
        Assert.InRange(elapsedSeconds, 0.007, 0.009);
    }

    [Fact]
    public void Under_the_host_clock_a_guest_sleeping_on_a_timer_sleeps_as_long_on_the_host()
    {
        const long sleepTicks = Tsc * 3 / 10; // 300 ms
        using var m = new PlatformMachine(clock: InterpreterClock.Host);
        m.Start(
            a =>
            {
                a.xor(r15, r15);
                EnableApic(a);
                a.mov(rdi, Lapic);
                a.mov(__dword_ptr[rdi + 0x320], TimerVector | (2 << 17)); // TSC-deadline mode
                a.rdtsc();
                a.shl(rdx, 32);
                a.or(rax, rdx);
                a.mov(r11, rax);
                a.mov(rax, sleepTicks);
                a.add(rax, r11);
                a.mov(rdx, rax);
                a.shr(rdx, 32);
                a.mov(ecx, 0x6E0);
                a.wrmsr();
                HaltUntilCount(a, 1);
                a.rdtsc();
                a.shl(rdx, 32);
                a.or(rax, rdx);
                a.sub(rax, r11);
                a.mov(r12, rax);
                a.hlt();
            },
            CountAndApicEoi);

        long start = System.Diagnostics.Stopwatch.GetTimestamp();
        var exit = m.Vcpu.Run();
        var hostElapsed = System.Diagnostics.Stopwatch.GetElapsedTime(start);
        var r = m.Vcpu.GetGeneralRegisters();

        Assert.Equal(VcpuExitReason.Halt, exit.Reason);
        Assert.Equal(1UL, r.R15);
        Assert.True((long)r.R12 >= sleepTicks, $"guest saw {r.R12} ticks");
        // The guest's 300 ms were spent on the host too (a lower bound: a busy host only makes it longer).
        Assert.True(hostElapsed >= TimeSpan.FromMilliseconds(299), $"the guest's sleep took {hostElapsed.TotalMilliseconds} ms on the host");
    }

    [Fact]
    public void Request_exit_wakes_a_halted_vcpu_under_the_host_clock()
    {
        using var m = new PlatformMachine(clock: InterpreterClock.Host);
        m.Start(
            a =>
            {
                a.sti();
                var loop = a.CreateLabel();
                a.Label(ref loop);
                a.hlt();
                a.jmp(loop);
            },
            a => a.iretq());
        using var timer = new Timer(_ => m.Vcpu.RequestExit(), null, 200, Timeout.Infinite);

        var exit = m.Vcpu.Run();

        Assert.Equal(VcpuExitReason.Interrupted, exit.Reason);
    }

    [Fact]
    public void Cpuid_advertises_apic_x2apic_tsc_deadline_and_invariant_tsc()
    {
        using var m = new PlatformMachine();
        var leaf1 = m.Partition.SupportedCpuid.Single(e => e.Function == 1);
        var ext7 = m.Partition.SupportedCpuid.Single(e => e.Function == 0x80000007);

        Assert.NotEqual(0u, leaf1.Edx & (1u << 9));
        Assert.NotEqual(0u, leaf1.Ecx & (1u << 24));
        Assert.NotEqual(0u, leaf1.Ecx & (1u << 21)); // x2APIC
        Assert.NotEqual(0u, ext7.Edx & (1u << 8));
        Assert.True(m.Partition.HasInterruptController);
    }

    [Fact]
    public void Hlt_with_interrupts_disabled_and_nothing_pending_exits_with_halt()
    {
        using var m = new PlatformMachine();
        m.Start(
            a =>
            {
                a.mov(eax, 7);
                a.hlt();
            },
            a => a.iretq());

        var exit = m.RunToExit();

        Assert.Equal(VcpuExitReason.Halt, exit.Reason);
        Assert.Equal(7UL, m.Vcpu.GetGeneralRegisters().Rax);
    }

    [Fact]
    public async Task Request_exit_while_sleeping_in_hlt_returns_interrupted_and_stays_halted()
    {
        using var m = new PlatformMachine();
        m.Start(
            a =>
            {
                a.sti();
                a.hlt(); // nothing armed: only a device could wake this
                a.mov(eax, 9);
                a.cli();
                a.hlt();
            },
            a =>
            {
                a.mov(rdi, Lapic);
                a.mov(__dword_ptr[rdi + 0xB0], 0);
                a.iretq();
            });

        var requester = Task.Run(
            async () =>
            {
                await Task.Delay(50, TestContext.Current.CancellationToken);
                m.Vcpu.RequestExit();
            },
            TestContext.Current.CancellationToken);

        var exit = m.RunToExit();
        await requester;

        Assert.Equal(VcpuExitReason.Interrupted, exit.Reason);
        Assert.NotEqual(9UL, m.Vcpu.GetGeneralRegisters().Rax);

        // Still halted: running again sleeps again instead of continuing past HLT.
        m.Vcpu.RequestExit();
        exit = m.RunToExit();
        Assert.Equal(VcpuExitReason.Interrupted, exit.Reason);
        Assert.NotEqual(9UL, m.Vcpu.GetGeneralRegisters().Rax);
    }

    [Fact]
    public void Msrs_mtrr_and_unknown_behave_as_documented()
    {
        using var m = new PlatformMachine();
        m.Start(
            a =>
            {
                a.mov(ecx, 0xFE);
                a.rdmsr();
                a.mov(r8, rax);
                a.mov(ecx, 0x2FF);
                a.rdmsr();
                a.mov(r9, rax);
                a.mov(ecx, 0x1B);
                a.rdmsr();
                a.mov(r10, rax);
                a.mov(ecx, 0x8B); // microcode signature: written 0, read back
                a.xor(eax, eax);
                a.xor(edx, edx);
                a.wrmsr();
                a.rdmsr();
                a.mov(r11, rax);
                a.mov(ecx, 0x12345);
                a.rdmsr(); // #GP: vector 13 ends in the handler
                a.hlt();
            },
            a => a.hlt());
        var s = m.Vcpu.GetSpecialRegisters();
        s.Idt = new DescriptorTable { Base = Idt, Limit = (256 * 16) - 1 };
        for (int v = 0; v < 32; v++)
        {
            ulong low = (Handler & 0xFFFF) | ((ulong)ProcessorSetup.KernelCode64 << 16) | (0x8EUL << 40) | (((Handler >> 16) & 0xFFFF) << 48);
            m.Memory.Write(new GuestAddress(Idt + (ulong)(v * 16)), low);
            m.Memory.Write(new GuestAddress(Idt + (ulong)(v * 16) + 8), Handler >> 32);
        }

        var exit = m.RunToExit();
        var r = m.Vcpu.GetGeneralRegisters();

        Assert.Equal(VcpuExitReason.Halt, exit.Reason);
        Assert.Equal(Handler + 1, r.Rip);
        Assert.Equal(8UL, r.R8 & 0xFF);
        Assert.Equal(0x806UL, r.R9);
        Assert.Equal(0xFEE00900UL, r.R10);
        Assert.Equal(0UL, r.R11);
    }

    [Fact]
    public void Apic_base_enters_x2apic_mode_from_xapic_mode_and_refuses_the_way_straight_back()
    {
        using var m = new PlatformMachine();
        m.Start(
            a =>
            {
                a.mov(ecx, 0x1B);
                a.rdmsr();
                a.mov(r8, rax);
                a.or(eax, 0x400); // x2APIC mode
                a.wrmsr();
                a.mov(ecx, 0x802); // x2APIC ID
                a.rdmsr();
                a.mov(r9, rax);
                a.mov(ecx, 0x803); // version
                a.rdmsr();
                a.mov(r10, rax);
                a.mov(eax, 0xB);
                a.xor(ecx, ecx);
                a.cpuid();
                a.mov(r11, rdx);
                a.mov(r12, rcx);
                a.mov(eax, 0xB);
                a.mov(ecx, 2);
                a.cpuid();
                a.mov(r13, rcx);
                a.mov(ecx, 0x1B);
                a.mov(eax, 0xFEE00900); // enabled xAPIC mode, straight from x2APIC mode: #GP
                a.xor(edx, edx);
                a.mov(r14d, 1);
                a.wrmsr();
                a.mov(r14d, 2);
                a.hlt();
            },
            a => a.hlt());
        for (int v = 0; v < 32; v++)
        {
            ulong low = (Handler & 0xFFFF) | ((ulong)ProcessorSetup.KernelCode64 << 16) | (0x8EUL << 40) | (((Handler >> 16) & 0xFFFF) << 48);
            m.Memory.Write(new GuestAddress(Idt + (ulong)(v * 16)), low);
            m.Memory.Write(new GuestAddress(Idt + (ulong)(v * 16) + 8), Handler >> 32);
        }

        var exit = m.RunToExit();
        var r = m.Vcpu.GetGeneralRegisters();

        Assert.Equal(VcpuExitReason.Halt, exit.Reason);
        Assert.Equal(Handler + 1, r.Rip); // the last WRMSR raised #GP
        Assert.Equal(1UL, r.R14);
        Assert.Equal(0xFEE00900UL, r.R8);
        Assert.Equal(0UL, r.R9);
        Assert.Equal(0x50014UL, r.R10);
        Assert.Equal(0UL, r.R11); // leaf 0xB: x2APIC ID
        Assert.Equal(0x100UL, r.R12); // sub-leaf 0: the SMT level
        Assert.Equal(2UL, r.R13); // sub-leaf 2: no further level
    }

    [Fact]
    public void Cr8_is_the_local_apic_task_priority_class()
    {
        using var m = new PlatformMachine();
        m.Start(
            a =>
            {
                a.mov(rax, 5);
                a.mov(cr8, rax);
                a.mov(rdi, Lapic);
                a.mov(ebx, __dword_ptr[rdi + 0x80]); // TPR
                a.mov(__dword_ptr[rdi + 0x80], 0x90);
                a.mov(rcx, cr8);
                a.hlt();
            },
            a => a.iretq());

        var exit = m.RunToExit();
        var r = m.Vcpu.GetGeneralRegisters();

        Assert.Equal(VcpuExitReason.Halt, exit.Reason);
        Assert.Equal(0x50UL, r.Rbx);
        Assert.Equal(9UL, r.Rcx);
    }

    private const ulong NmiHandler = 0x21000;

    /// <summary>ICR low: delivery mode NMI (100b), destination shorthand self.</summary>
    private const int SelfNmi = (4 << 8) | (1 << 18);

    /// <summary>Points vector 2 at <paramref name="handler"/>, assembled at <see cref="NmiHandler"/>.</summary>
    private static void InstallNmiHandler(PlatformMachine m, Action<Assembler> handler)
    {
        m.Memory.Write(new GuestAddress(NmiHandler), GuestProgram.Assemble(64, NmiHandler, handler));
        ulong low = (NmiHandler & 0xFFFF) | ((ulong)ProcessorSetup.KernelCode64 << 16) | (0x8EUL << 40) | (((NmiHandler >> 16) & 0xFFFF) << 48);
        m.Memory.Write(new GuestAddress(Idt + (2 * 16)), low);
        m.Memory.Write(new GuestAddress(Idt + (2 * 16) + 8), NmiHandler >> 32);
    }

    private static void SendSelfNmi(Assembler a)
    {
        a.mov(rdi, Lapic);
        a.mov(__dword_ptr[rdi + 0x310], 0);
        a.mov(__dword_ptr[rdi + 0x300], SelfNmi);
    }

    [Fact]
    public void An_nmi_is_delivered_while_interrupts_are_disabled()
    {
        using var m = new PlatformMachine();
        m.Start(a =>
        {
            EnableApic(a);
            a.cli();
            a.xor(r14, r14);
            SendSelfNmi(a);
            a.nop();
            a.hlt();
        }, a => a.hlt());
        InstallNmiHandler(m, a =>
        {
            a.inc(r14);
            a.iretq();
        });
        var exit = m.RunToExit();
        Assert.True(exit.Reason == VcpuExitReason.Halt, exit.ToString());
        Assert.Equal(1UL, m.Vcpu.GetGeneralRegisters().R14);
    }

    [Fact]
    public void Nmis_raised_inside_an_nmi_handler_wait_for_its_iret_and_merge_into_one()
    {
        using var m = new PlatformMachine();
        m.Start(a =>
        {
            EnableApic(a);
            a.cli();
            a.xor(r14, r14);
            a.xor(r13, r13);
            SendSelfNmi(a);
            a.nop();
            a.nop();
            a.hlt();
        }, a => a.hlt());
        InstallNmiHandler(m, a =>
        {
            var done = a.CreateLabel();
            a.inc(r14);
            a.cmp(r14, 1);
            a.jne(done);
            SendSelfNmi(a);
            a.mov(__dword_ptr[rdi + 0x300], SelfNmi);
            a.nop();
            a.mov(r13, r14); // still 1: both NMIs are held while this one is in service
            a.Label(ref done);
            a.iretq();
        });
        var exit = m.RunToExit();
        Assert.True(exit.Reason == VcpuExitReason.Halt, exit.ToString());
        var r = m.Vcpu.GetGeneralRegisters();
        Assert.Equal((2UL, 1UL), (r.R14, r.R13));
        Assert.False(m.Vcpu.GetState().Events.NmiMasked);
    }
}
