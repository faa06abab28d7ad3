using Virt.Boot;
using Virt.Testing;
using static Iced.Intel.AssemblerRegisters;
using Xunit;

namespace Virt.Cpu.Interpreter.Tests.Debugging;

/// <summary>
/// Host debugging through <see cref="IVirtualCpu.SetGuestDebug"/>: single steps, host execute breakpoints, INT3
/// interception and watchpoints, the same on the interpreter and on KVM where this host's KVM reports them.
/// </summary>
public sealed class GuestDebugTests
{
    private const ulong Data = 0x20000;
    private const ulong UserStack = 0x70000;

    /// <summary>
    /// <c>mov eax, 1</c>; <c>mov ebx, 2</c>; <c>int3</c> (or a NOP); <c>mov ecx, 3</c>; <c>mov [Data], ecx</c>;
    /// <c>mov edx, [Data]</c>; <c>hlt</c>; at CPL 3 after an IRETQ when <paramref name="user"/>.
    /// </summary>
    private static (byte[] Code, ulong First) Program(bool user, bool int3)
    {
        byte[] code = GuestProgram.Assemble(64, Machine.CodeAddress, a =>
        {
            var start = a.CreateLabel();
            if (user)
            {
                a.push(ProcessorSetup.UserData);
                a.push((int)UserStack);
                a.push((int)Machine.FlagsReserved);
                a.push(ProcessorSetup.UserCode64);
                a.lea(rax, __[start]);
                a.push(rax);
                a.iretq();
            }

            a.Label(ref start);
            a.mov(eax, 1);
            a.mov(ebx, 2);
            if (int3)
            {
                a.int3();
            }
            else
            {
                a.nop();
            }

            a.mov(ecx, 3);
            a.mov(__dword_ptr[(long)Data], ecx);
            a.mov(edx, __dword_ptr[(long)Data]);
            a.hlt();
        });
        int first = user ? code.AsSpan().IndexOf(stackalloc byte[] { 0xB8, 0x01, 0x00, 0x00, 0x00 }) : 0;
        return (code, Machine.CodeAddress + (ulong)first);
    }

    /// <summary>DR7 enabling slot <paramref name="slot"/> locally with R/W <paramref name="rw"/> and LEN <paramref name="len"/>.</summary>
    private static ulong Dr7(int slot, int rw, int len) => (1UL << (slot * 2)) | ((ulong)rw << (16 + (slot * 4))) | ((ulong)len << (18 + (slot * 4)));

    [Theory]
    [MemberData(nameof(TestBackends.Both), MemberType = typeof(TestBackends))]
    public void Single_steps_stop_after_each_kernel_mode_instruction_with_DR6_BS(string backend)
    {
        var (code, _) = Program(user: false, int3: false);
        using var m = new Machine(TestBackends.Create(backend));
        m.Start(StartMode.Long64, code);
        m.Vcpu.SetGuestDebug(new GuestDebugSettings(SingleStep: true, InterceptBreakpointInstructions: false, default));
        var rips = new List<ulong>();
        for (int i = 0; i < 4; i++)
        {
            var exit = m.Run();
            Assert.True(exit.Reason == VcpuExitReason.Debug, exit.ToString());
            Assert.Equal(GuestDebugSettings.SingleStepStatus, exit.DebugStatus);
            Assert.False(exit.IsBreakpointInstruction);
            rips.Add(m.Regs.Rip);
        }

        ulong c = Machine.CodeAddress;
        Assert.Equal([c + 5, c + 10, c + 11, c + 16], rips);
        Assert.Equal(3UL, m.Regs.Rcx);
        Assert.Equal(0UL, m.Regs.Rdx);

        m.Vcpu.SetGuestDebug(default);
        var end = m.Run();
        Assert.True(end.Reason == VcpuExitReason.Halt, end.ToString());
        Assert.Equal(3UL, m.Regs.Rdx);
    }

    [Theory]
    [MemberData(nameof(TestBackends.Both), MemberType = typeof(TestBackends))]
    public void An_execute_breakpoint_stops_before_the_instruction_and_does_not_touch_the_guests_debug_registers(string backend)
    {
        var (code, _) = Program(user: false, int3: false);
        using var m = new Machine(TestBackends.Create(backend));
        m.Start(StartMode.Long64, code);
        ulong target = Machine.CodeAddress + 11; // mov ecx, 3
        var before = m.Vcpu.GetDebugRegisters();
        m.Vcpu.SetGuestDebug(new GuestDebugSettings(false, false, new DebugRegisters { Dr2 = target, Dr7 = Dr7(2, 0, 0) }));
        var exit = m.Run();
        Assert.True(exit.Reason == VcpuExitReason.Debug, exit.ToString());
        Assert.Equal(1UL << 2, exit.DebugStatus);
        Assert.Equal(target, m.Regs.Rip);
        Assert.Equal(0UL, m.Regs.Rcx);
        Assert.Equal(before.Dr7, m.Vcpu.GetDebugRegisters().Dr7);

        // A debugger steps over its breakpoint without it, then puts it back.
        m.Vcpu.SetGuestDebug(new GuestDebugSettings(SingleStep: true, false, default));
        Assert.Equal(VcpuExitReason.Debug, m.Run().Reason);
        Assert.Equal(3UL, m.Regs.Rcx);
        m.Vcpu.SetGuestDebug(default);
        Assert.Equal(VcpuExitReason.Halt, m.Run().Reason);
    }

    /// <summary>KVM without hardware virtualization does not stop user-mode guest code (docs/backends.md); the skip says so.</summary>
    private static void RequireUserModeDebugging(string backend)
    {
        if (backend == "kvm" && KvmUserModeDebugUnavailableReason() is { } reason)
        {
            Assert.Skip($"Skipped on this host: {reason}; KVM_SET_GUEST_DEBUG has no effect on user-mode code, which runs natively on the host processor. The interpreter covers this test.");
        }
    }

    private static string? KvmUserModeDebugUnavailableReason() =>
        Directory.Exists("/sys/module/kvm_pvm") ? "this host's KVM is paravirtual (kvm_pvm)"
        : File.Exists("/proc/cpuinfo") && !File.ReadAllText("/proc/cpuinfo").Contains(" vmx", StringComparison.Ordinal) && !File.ReadAllText("/proc/cpuinfo").Contains(" svm", StringComparison.Ordinal)
            ? "this host's processor has no hardware virtualization (no vmx or svm flag)" : null;

    [Theory]
    [MemberData(nameof(TestBackends.Both), MemberType = typeof(TestBackends))]
    public void User_mode_int3_stops_at_the_instruction_and_watchpoints_stop_after_the_access(string backend)
    {
        var hypervisor = TestBackends.Create(backend);
        RequireUserModeDebugging(backend);
        var (code, first) = Program(user: true, int3: true);
        using var m = new Machine(hypervisor);
        m.Start(StartMode.Long64, code);
        ulong int3At = first + 10;
        var hw = new DebugRegisters { Dr0 = Data, Dr1 = Data, Dr7 = Dr7(0, 1, 3) | Dr7(1, 3, 3) };
        m.Vcpu.SetGuestDebug(new GuestDebugSettings(false, InterceptBreakpointInstructions: true, hw));

        var exit = m.Run();
        Assert.True(exit.Reason == VcpuExitReason.Debug && exit.IsBreakpointInstruction, exit.ToString());
        Assert.Equal(int3At, m.Regs.Rip);
        Assert.Equal(3, m.Vcpu.GetSpecialRegisters().Cs.Selector & 3);

        var regs = m.Regs;
        regs.Rip++; // the debugger resumes past its INT3
        m.Vcpu.SetGeneralRegisters(regs);
        exit = m.Run();
        Assert.True(exit.Reason == VcpuExitReason.Debug, exit.ToString());
        Assert.Equal(0b11UL, exit.DebugStatus & 0xF); // the write hits the write watch and the access watch
        Assert.Equal(first + 23, m.Regs.Rip); // after the store
        Assert.Equal(3u, m.Memory.Read<uint>(new GuestAddress(Data)));

        exit = m.Run();
        Assert.True(exit.Reason == VcpuExitReason.Debug, exit.ToString());
        Assert.Equal(0b10UL, exit.DebugStatus & 0xF); // the read hits only the access watch
        Assert.Equal(3UL, m.Regs.Rdx);
    }

    [Fact]
    public void The_interpreter_offers_every_debug_feature_and_rejects_io_breakpoints()
    {
        using var m = new Machine(new InterpreterHypervisor());
        Assert.Equal(GuestDebugFeatures.SingleStep | GuestDebugFeatures.SoftwareBreakpoints | GuestDebugFeatures.HardwareBreakpoints | GuestDebugFeatures.Watchpoints, m.Vcpu.DebugFeatures);
        var e = Assert.Throws<NotSupportedException>(() => m.Vcpu.SetGuestDebug(new GuestDebugSettings(false, false, new DebugRegisters { Dr0 = 0x3F8, Dr7 = Dr7(0, 2, 0) })));
        Assert.Contains("I/O", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Kvm_reports_what_this_host_can_do()
    {
        var hypervisor = TestBackends.Create("kvm");
        using var m = new Machine(hypervisor);
        var features = m.Vcpu.DebugFeatures;
        Assert.True((features & GuestDebugFeatures.SingleStep) != 0, features.ToString());
        if (KvmUserModeDebugUnavailableReason() is not null)
        {
            Assert.Equal(GuestDebugFeatures.SingleStep | GuestDebugFeatures.HardwareBreakpoints, features);
            var e = Assert.Throws<NotSupportedException>(() => m.Vcpu.SetGuestDebug(new GuestDebugSettings(false, InterceptBreakpointInstructions: true, default)));
            Assert.Contains("INT3", e.Message, StringComparison.Ordinal);
        }
    }
}
