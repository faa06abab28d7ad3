using Virt.Cpu;
using Virt.Cpu.Whp;
using Xunit;

namespace Virt.Cpu.Whp.Tests.Exits;

/// <summary>The exit translation fed with hand-built WHV_RUN_VP_EXIT_CONTEXT values.</summary>
public sealed unsafe class ExitTranslatorTests
{
    private static WHV_RUN_VP_EXIT_CONTEXT Exit(WhvRunVpExitReason reason, ulong rip = 0x1000, int instructionLength = 2)
    {
        var e = default(WHV_RUN_VP_EXIT_CONTEXT);
        e.ExitReason = reason;
        e.VpContext.Rip = rip;
        e.VpContext.InstructionLengthCr8 = (byte)instructionLength;
        return e;
    }

    private static WHV_RUN_VP_EXIT_CONTEXT Io(ushort port, int size, bool write, bool stringOp = false, bool rep = false)
    {
        var e = Exit(WhvRunVpExitReason.X64IoPortAccess);
        e.IoPortAccess.PortNumber = port;
        e.IoPortAccess.AccessInfo = (write ? 1u : 0) | ((uint)size << 1) | (stringOp ? 1u << 4 : 0) | (rep ? 1u << 5 : 0);
        e.IoPortAccess.InstructionByteCount = 1;
        e.IoPortAccess.InstructionBytes[0] = write ? (byte)0xE6 : (byte)0xE4;
        return e;
    }

    [Theory]
    [InlineData(0x3F8, 1, true)]
    [InlineData(0x60, 1, false)]
    [InlineData(0xCF8, 4, true)]
    [InlineData(0x1F0, 2, false)]
    public void Io_port_exit_is_emulated_as_a_port_io_exit_with_port_size_and_direction(int port, int size, bool write)
    {
        var t = ExitTranslator.Translate(Io((ushort)port, size, write), exitRequested: false);
        Assert.Equal(ExitAction.EmulateIo, t.Action);
        Assert.Equal(VcpuExitReason.PortIo, t.Exit.Reason);
        Assert.Equal((ushort)port, t.Exit.Port);
        Assert.Equal(size, t.Exit.Size);
        Assert.Equal(1, t.Exit.Count);
        Assert.Equal(write, t.Exit.IsWrite);
    }

    [Fact]
    public void Io_port_access_info_bit_fields_decode_as_the_header_defines()
    {
        var e = Io(0x1F0, 2, write: false, stringOp: true, rep: true);
        Assert.False(e.IoPortAccess.IsWrite);
        Assert.Equal(2, e.IoPortAccess.AccessSize);
        Assert.True(e.IoPortAccess.StringOp);
        Assert.True(e.IoPortAccess.RepPrefix);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(3)]
    [InlineData(7)]
    public void Io_port_exit_with_an_impossible_size_is_an_internal_error_not_a_host_exception(int size)
    {
        var t = ExitTranslator.Translate(Io(0x80, size, true), exitRequested: false);
        Assert.Equal(ExitAction.Return, t.Action);
        Assert.Equal(VcpuExitReason.InternalError, t.Exit.Reason);
        Assert.Equal([0xE6], t.Exit.Fault!.InstructionBytes.ToArray());
        Assert.Equal(0x1000UL, t.Exit.Fault.Rip);
    }

    [Theory]
    [InlineData((uint)WhvMemoryAccessType.Read, true, false)]
    [InlineData((uint)WhvMemoryAccessType.Write, true, true)]
    [InlineData((uint)WhvMemoryAccessType.Write, false, true)] // a write to ROM
    public void Memory_access_to_unmapped_or_read_only_memory_is_emulated_as_mmio(uint type, bool unmapped, bool write)
    {
        var e = Exit(WhvRunVpExitReason.MemoryAccess);
        e.MemoryAccess.Gpa = 0xFEC0_0010;
        e.MemoryAccess.AccessInfo = type | (unmapped ? 1u << 2 : 0);
        var t = ExitTranslator.Translate(e, exitRequested: false);
        Assert.Equal(ExitAction.EmulateMmio, t.Action);
        Assert.Equal(VcpuExitReason.Mmio, t.Exit.Reason);
        Assert.Equal(new GuestAddress(0xFEC0_0010), t.Exit.Address);
        Assert.Equal(write, t.Exit.IsWrite);
    }

    [Fact]
    public void Executing_from_a_hole_is_an_internal_error_naming_the_address()
    {
        var e = Exit(WhvRunVpExitReason.MemoryAccess);
        e.MemoryAccess.Gpa = 0xD000_0000;
        e.MemoryAccess.AccessInfo = (uint)WhvMemoryAccessType.Execute | (1u << 2);
        var t = ExitTranslator.Translate(e, exitRequested: false);
        Assert.Equal(VcpuExitReason.InternalError, t.Exit.Reason);
        Assert.Contains("0xd0000000", t.Exit.Fault!.Description, StringComparison.Ordinal);
    }

    [Fact]
    public void Halt_exit_is_a_halt()
    {
        var t = ExitTranslator.Translate(Exit(WhvRunVpExitReason.X64Halt), exitRequested: false);
        Assert.Equal((ExitAction.Return, VcpuExitReason.Halt), (t.Action, t.Exit.Reason));
    }

    [Fact]
    public void Canceled_exit_is_interrupted_when_the_caller_asked()
    {
        var t = ExitTranslator.Translate(Exit(WhvRunVpExitReason.Canceled), exitRequested: true);
        Assert.Equal((ExitAction.Return, VcpuExitReason.Interrupted), (t.Action, t.Exit.Reason));
    }

    [Fact]
    public void Canceled_exit_nobody_asked_for_resumes_the_guest()
    {
        var t = ExitTranslator.Translate(Exit(WhvRunVpExitReason.Canceled), exitRequested: false);
        Assert.Equal(ExitAction.Resume, t.Action);
    }

    [Theory]
    [InlineData((uint)WhvRunVpExitReason.X64InterruptWindow)]
    [InlineData((uint)WhvRunVpExitReason.X64ApicEoi)]
    public void Notification_exits_resume_the_guest(uint reason) =>
        Assert.Equal(ExitAction.Resume, ExitTranslator.Translate(Exit((WhvRunVpExitReason)reason), exitRequested: false).Action);

    [Fact]
    public void Unrecoverable_exception_is_a_shutdown_with_the_rip()
    {
        var t = ExitTranslator.Translate(Exit(WhvRunVpExitReason.UnrecoverableException, rip: 0xFFF0), exitRequested: false);
        Assert.Equal(VcpuExitReason.Shutdown, t.Exit.Reason);
        Assert.Equal(0xFFF0UL, t.Exit.Fault!.Rip);
    }

    [Fact]
    public void Invalid_vp_register_value_is_a_failed_entry()
    {
        var t = ExitTranslator.Translate(Exit(WhvRunVpExitReason.InvalidVpRegisterValue), exitRequested: false);
        Assert.Equal(VcpuExitReason.FailEntry, t.Exit.Reason);
        Assert.NotNull(t.Exit.Fault);
    }

    [Fact]
    public void Unsupported_feature_is_an_internal_error_with_the_feature_code()
    {
        var e = Exit(WhvRunVpExitReason.UnsupportedFeature);
        e.UnsupportedFeature.FeatureCode = 2;
        e.UnsupportedFeature.FeatureParameter = 0x28;
        var t = ExitTranslator.Translate(e, exitRequested: false);
        Assert.Equal(VcpuExitReason.InternalError, t.Exit.Reason);
        Assert.Equal(2UL, t.Exit.Fault!.Code);
        Assert.Contains("task switch", t.Exit.Fault.Description, StringComparison.Ordinal);
    }

    [Fact]
    public void Exception_exit_reports_vector_error_code_and_instruction_bytes()
    {
        var e = Exit(WhvRunVpExitReason.Exception, rip: 0x2000);
        e.VpException.ExceptionType = 13;
        e.VpException.ExceptionInfo = 1;
        e.VpException.ErrorCode = 0x18;
        e.VpException.InstructionByteCount = 2;
        e.VpException.InstructionBytes[0] = 0x0F;
        e.VpException.InstructionBytes[1] = 0x0B;
        var t = ExitTranslator.Translate(e, exitRequested: false);
        Assert.Equal(VcpuExitReason.Exception, t.Exit.Reason);
        Assert.Equal(13UL, t.Exit.Value);
        Assert.Equal(0x18UL, t.Exit.Fault!.Code);
        Assert.Equal(0x2000UL, t.Exit.Fault.Rip);
        Assert.Equal([0x0F, 0x0B], t.Exit.Fault.InstructionBytes.ToArray());
    }

    [Fact]
    public void Instruction_byte_count_from_the_hypervisor_is_clamped_to_the_buffer()
    {
        var e = Io(0x80, 1, true);
        e.IoPortAccess.InstructionByteCount = 200;
        Assert.Equal(16, ExitTranslator.InstructionBytes(e).Length);
    }

    [Fact]
    public void Hypercall_exit_carries_rax()
    {
        var e = Exit(WhvRunVpExitReason.Hypercall);
        e.Hypercall.Rax = 0x1234;
        var t = ExitTranslator.Translate(e, exitRequested: false);
        Assert.Equal((VcpuExitReason.Hypercall, 0x1234UL), (t.Exit.Reason, t.Exit.Value));
    }

    [Fact]
    public void Cpuid_and_msr_exits_are_answered_in_the_run_loop()
    {
        Assert.Equal(ExitAction.AnswerCpuid, ExitTranslator.Translate(Exit(WhvRunVpExitReason.X64Cpuid), false).Action);
        Assert.Equal(ExitAction.AnswerMsr, ExitTranslator.Translate(Exit(WhvRunVpExitReason.X64MsrAccess), false).Action);
    }

    [Theory]
    [InlineData((uint)WhvRunVpExitReason.None)]
    [InlineData((uint)WhvRunVpExitReason.X64Rdtsc)]
    [InlineData((uint)WhvRunVpExitReason.SynicSintDeliverable)]
    [InlineData(0xDEADu)]
    public void Exit_reasons_this_backend_never_enables_are_internal_errors(uint reason)
    {
        var t = ExitTranslator.Translate(Exit((WhvRunVpExitReason)reason), exitRequested: false);
        Assert.Equal((ExitAction.Return, VcpuExitReason.InternalError), (t.Action, t.Exit.Reason));
        Assert.Equal((ulong)reason, t.Exit.Fault!.Code);
    }

    [Fact]
    public void Vp_context_fields_decode_instruction_length_and_mode()
    {
        var e = Exit(WhvRunVpExitReason.X64Halt, instructionLength: 0xF);
        e.VpContext.InstructionLengthCr8 = 0x5F; // Cr8 = 5 in the high nibble
        e.VpContext.ExecutionState = (1 << 2) | (1 << 4);
        Assert.Equal(15, e.VpContext.InstructionLength);
        Assert.True(e.VpContext.ProtectedMode);
        Assert.True(e.VpContext.LongModeActive);
    }
}
