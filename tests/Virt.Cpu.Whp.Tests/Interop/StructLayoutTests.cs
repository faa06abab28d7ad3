using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Virt.Cpu.Whp;
using Xunit;

namespace Virt.Cpu.Whp.Tests.Interop;

/// <summary>
/// Sizes and field offsets of every interop struct and union against the x64 definitions in the Windows
/// SDK headers WinHvPlatformDefs.h and WinHvEmulation.h (values written out from the headers, including
/// their C_ASSERTs on sizes).
/// </summary>
public sealed class StructLayoutTests
{
    public static TheoryData<Type, int> Sizes => new()
    {
        { typeof(WHV_X64_SEGMENT_REGISTER), 16 },
        { typeof(WHV_X64_TABLE_REGISTER), 16 },
        { typeof(WHV_X64_FP_CONTROL_STATUS_REGISTER), 16 },
        { typeof(WHV_X64_XMM_CONTROL_STATUS_REGISTER), 16 },
        { typeof(WHV_REGISTER_VALUE), 16 },
        { typeof(WHV_CAPABILITY), 24 },
        { typeof(WHV_PARTITION_PROPERTY), 48 },
        { typeof(WHV_X64_CPUID_RESULT), 32 },
        { typeof(WHV_VP_EXIT_CONTEXT), 40 },
        { typeof(WHV_MEMORY_ACCESS_CONTEXT), 40 },
        { typeof(WHV_X64_IO_PORT_ACCESS_CONTEXT), 96 },
        { typeof(WHV_X64_MSR_ACCESS_CONTEXT), 24 },
        { typeof(WHV_X64_CPUID_ACCESS_CONTEXT), 64 },
        { typeof(WHV_VP_EXCEPTION_CONTEXT), 40 },
        { typeof(WHV_X64_INTERRUPTION_DELIVERABLE_CONTEXT), 4 },
        { typeof(WHV_X64_UNSUPPORTED_FEATURE_CONTEXT), 16 },
        { typeof(WHV_RUN_VP_CANCELED_CONTEXT), 4 },
        { typeof(WHV_HYPERCALL_CONTEXT), 176 },
        { typeof(WHV_RUN_VP_EXIT_CONTEXT), 224 },
        { typeof(WHV_INTERRUPT_CONTROL), 16 },
        { typeof(WHV_TRANSLATE_GVA_RESULT), 8 },
        { typeof(WHV_EMULATOR_STATUS), 4 },
        { typeof(WHV_EMULATOR_MEMORY_ACCESS_INFO), 24 },
        { typeof(WHV_EMULATOR_IO_ACCESS_INFO), 12 },
        { typeof(WHV_EMULATOR_CALLBACKS), 48 },
    };

    [Theory]
    [MemberData(nameof(Sizes))]
    public void Struct_has_the_size_of_the_sdk_header(Type type, int expected)
    {
        Assert.Equal(expected, Marshal.SizeOf(type));
        Assert.Equal(expected, ManagedSize(type));
    }

    public static TheoryData<Type, string, int> Offsets => new()
    {
        { typeof(WHV_X64_SEGMENT_REGISTER), "Base", 0 },
        { typeof(WHV_X64_SEGMENT_REGISTER), "Limit", 8 },
        { typeof(WHV_X64_SEGMENT_REGISTER), "Selector", 12 },
        { typeof(WHV_X64_SEGMENT_REGISTER), "Attributes", 14 },

        { typeof(WHV_X64_TABLE_REGISTER), "Pad", 0 },
        { typeof(WHV_X64_TABLE_REGISTER), "Limit", 6 },
        { typeof(WHV_X64_TABLE_REGISTER), "Base", 8 },

        { typeof(WHV_X64_FP_CONTROL_STATUS_REGISTER), "FpControl", 0 },
        { typeof(WHV_X64_FP_CONTROL_STATUS_REGISTER), "FpStatus", 2 },
        { typeof(WHV_X64_FP_CONTROL_STATUS_REGISTER), "FpTag", 4 },
        { typeof(WHV_X64_FP_CONTROL_STATUS_REGISTER), "Reserved", 5 },
        { typeof(WHV_X64_FP_CONTROL_STATUS_REGISTER), "LastFpOp", 6 },
        { typeof(WHV_X64_FP_CONTROL_STATUS_REGISTER), "LastFpRip", 8 },

        { typeof(WHV_X64_XMM_CONTROL_STATUS_REGISTER), "LastFpRdp", 0 },
        { typeof(WHV_X64_XMM_CONTROL_STATUS_REGISTER), "XmmStatusControl", 8 },
        { typeof(WHV_X64_XMM_CONTROL_STATUS_REGISTER), "XmmStatusControlMask", 12 },

        { typeof(WHV_REGISTER_VALUE), "Low64", 0 },
        { typeof(WHV_REGISTER_VALUE), "High64", 8 },
        { typeof(WHV_REGISTER_VALUE), "Reg64", 0 },
        { typeof(WHV_REGISTER_VALUE), "Reg32", 0 },
        { typeof(WHV_REGISTER_VALUE), "Reg16", 0 },
        { typeof(WHV_REGISTER_VALUE), "Reg8", 0 },
        { typeof(WHV_REGISTER_VALUE), "Segment", 0 },
        { typeof(WHV_REGISTER_VALUE), "Table", 0 },
        { typeof(WHV_REGISTER_VALUE), "FpControlStatus", 0 },
        { typeof(WHV_REGISTER_VALUE), "XmmControlStatus", 0 },
        { typeof(WHV_REGISTER_VALUE), "PendingInterruption", 0 },
        { typeof(WHV_REGISTER_VALUE), "InterruptState", 0 },
        { typeof(WHV_REGISTER_VALUE), "DeliverabilityNotifications", 0 },

        { typeof(WHV_CAPABILITY), "HypervisorPresent", 0 },
        { typeof(WHV_CAPABILITY), "Features", 0 },
        { typeof(WHV_CAPABILITY), "ExtendedVmExits", 0 },
        { typeof(WHV_CAPABILITY), "ProcessorVendor", 0 },
        { typeof(WHV_CAPABILITY), "ProcessorFeatures", 0 },
        { typeof(WHV_CAPABILITY), "ProcessorClFlushSize", 0 },
        { typeof(WHV_CAPABILITY), "ProcessorClockFrequency", 0 },
        { typeof(WHV_CAPABILITY), "ExceptionExitBitmap", 0 },
        { typeof(WHV_CAPABILITY), "BanksCount", 0 },
        { typeof(WHV_CAPABILITY), "Bank0", 8 },
        { typeof(WHV_CAPABILITY), "Bank1", 16 },

        { typeof(WHV_PARTITION_PROPERTY), "ExtendedVmExits", 0 },
        { typeof(WHV_PARTITION_PROPERTY), "ProcessorFeatures", 0 },
        { typeof(WHV_PARTITION_PROPERTY), "ProcessorClFlushSize", 0 },
        { typeof(WHV_PARTITION_PROPERTY), "ProcessorCount", 0 },
        { typeof(WHV_PARTITION_PROPERTY), "SeparateSecurityDomain", 0 },
        { typeof(WHV_PARTITION_PROPERTY), "ExceptionExitBitmap", 0 },
        { typeof(WHV_PARTITION_PROPERTY), "X64MsrExitBitmap", 0 },
        { typeof(WHV_PARTITION_PROPERTY), "LocalApicEmulationMode", 0 },

        { typeof(WHV_X64_CPUID_RESULT), "Function", 0 },
        { typeof(WHV_X64_CPUID_RESULT), "Reserved", 4 },
        { typeof(WHV_X64_CPUID_RESULT), "Eax", 16 },
        { typeof(WHV_X64_CPUID_RESULT), "Ebx", 20 },
        { typeof(WHV_X64_CPUID_RESULT), "Ecx", 24 },
        { typeof(WHV_X64_CPUID_RESULT), "Edx", 28 },

        { typeof(WHV_VP_EXIT_CONTEXT), "ExecutionState", 0 },
        { typeof(WHV_VP_EXIT_CONTEXT), "InstructionLengthCr8", 2 },
        { typeof(WHV_VP_EXIT_CONTEXT), "Reserved", 3 },
        { typeof(WHV_VP_EXIT_CONTEXT), "Reserved2", 4 },
        { typeof(WHV_VP_EXIT_CONTEXT), "Cs", 8 },
        { typeof(WHV_VP_EXIT_CONTEXT), "Rip", 24 },
        { typeof(WHV_VP_EXIT_CONTEXT), "Rflags", 32 },

        { typeof(WHV_MEMORY_ACCESS_CONTEXT), "InstructionByteCount", 0 },
        { typeof(WHV_MEMORY_ACCESS_CONTEXT), "Reserved", 1 },
        { typeof(WHV_MEMORY_ACCESS_CONTEXT), "InstructionBytes", 4 },
        { typeof(WHV_MEMORY_ACCESS_CONTEXT), "AccessInfo", 20 },
        { typeof(WHV_MEMORY_ACCESS_CONTEXT), "Gpa", 24 },
        { typeof(WHV_MEMORY_ACCESS_CONTEXT), "Gva", 32 },

        { typeof(WHV_X64_IO_PORT_ACCESS_CONTEXT), "InstructionByteCount", 0 },
        { typeof(WHV_X64_IO_PORT_ACCESS_CONTEXT), "Reserved", 1 },
        { typeof(WHV_X64_IO_PORT_ACCESS_CONTEXT), "InstructionBytes", 4 },
        { typeof(WHV_X64_IO_PORT_ACCESS_CONTEXT), "AccessInfo", 20 },
        { typeof(WHV_X64_IO_PORT_ACCESS_CONTEXT), "PortNumber", 24 },
        { typeof(WHV_X64_IO_PORT_ACCESS_CONTEXT), "Reserved2", 26 },
        { typeof(WHV_X64_IO_PORT_ACCESS_CONTEXT), "Rax", 32 },
        { typeof(WHV_X64_IO_PORT_ACCESS_CONTEXT), "Rcx", 40 },
        { typeof(WHV_X64_IO_PORT_ACCESS_CONTEXT), "Rsi", 48 },
        { typeof(WHV_X64_IO_PORT_ACCESS_CONTEXT), "Rdi", 56 },
        { typeof(WHV_X64_IO_PORT_ACCESS_CONTEXT), "Ds", 64 },
        { typeof(WHV_X64_IO_PORT_ACCESS_CONTEXT), "Es", 80 },

        { typeof(WHV_X64_MSR_ACCESS_CONTEXT), "AccessInfo", 0 },
        { typeof(WHV_X64_MSR_ACCESS_CONTEXT), "MsrNumber", 4 },
        { typeof(WHV_X64_MSR_ACCESS_CONTEXT), "Rax", 8 },
        { typeof(WHV_X64_MSR_ACCESS_CONTEXT), "Rdx", 16 },

        { typeof(WHV_X64_CPUID_ACCESS_CONTEXT), "Rax", 0 },
        { typeof(WHV_X64_CPUID_ACCESS_CONTEXT), "Rcx", 8 },
        { typeof(WHV_X64_CPUID_ACCESS_CONTEXT), "Rdx", 16 },
        { typeof(WHV_X64_CPUID_ACCESS_CONTEXT), "Rbx", 24 },
        { typeof(WHV_X64_CPUID_ACCESS_CONTEXT), "DefaultResultRax", 32 },
        { typeof(WHV_X64_CPUID_ACCESS_CONTEXT), "DefaultResultRcx", 40 },
        { typeof(WHV_X64_CPUID_ACCESS_CONTEXT), "DefaultResultRdx", 48 },
        { typeof(WHV_X64_CPUID_ACCESS_CONTEXT), "DefaultResultRbx", 56 },

        { typeof(WHV_VP_EXCEPTION_CONTEXT), "InstructionByteCount", 0 },
        { typeof(WHV_VP_EXCEPTION_CONTEXT), "Reserved", 1 },
        { typeof(WHV_VP_EXCEPTION_CONTEXT), "InstructionBytes", 4 },
        { typeof(WHV_VP_EXCEPTION_CONTEXT), "ExceptionInfo", 20 },
        { typeof(WHV_VP_EXCEPTION_CONTEXT), "ExceptionType", 24 },
        { typeof(WHV_VP_EXCEPTION_CONTEXT), "Reserved2", 25 },
        { typeof(WHV_VP_EXCEPTION_CONTEXT), "ErrorCode", 28 },
        { typeof(WHV_VP_EXCEPTION_CONTEXT), "ExceptionParameter", 32 },

        { typeof(WHV_X64_INTERRUPTION_DELIVERABLE_CONTEXT), "DeliverableType", 0 },

        { typeof(WHV_X64_UNSUPPORTED_FEATURE_CONTEXT), "FeatureCode", 0 },
        { typeof(WHV_X64_UNSUPPORTED_FEATURE_CONTEXT), "Reserved", 4 },
        { typeof(WHV_X64_UNSUPPORTED_FEATURE_CONTEXT), "FeatureParameter", 8 },

        { typeof(WHV_RUN_VP_CANCELED_CONTEXT), "CancelReason", 0 },

        { typeof(WHV_HYPERCALL_CONTEXT), "Rax", 0 },
        { typeof(WHV_HYPERCALL_CONTEXT), "Rbx", 8 },
        { typeof(WHV_HYPERCALL_CONTEXT), "Rcx", 16 },
        { typeof(WHV_HYPERCALL_CONTEXT), "Rdx", 24 },
        { typeof(WHV_HYPERCALL_CONTEXT), "R8", 32 },
        { typeof(WHV_HYPERCALL_CONTEXT), "Rsi", 40 },
        { typeof(WHV_HYPERCALL_CONTEXT), "Rdi", 48 },

        { typeof(WHV_RUN_VP_EXIT_CONTEXT), "ExitReason", 0 },
        { typeof(WHV_RUN_VP_EXIT_CONTEXT), "Reserved", 4 },
        { typeof(WHV_RUN_VP_EXIT_CONTEXT), "VpContext", 8 },
        { typeof(WHV_RUN_VP_EXIT_CONTEXT), "MemoryAccess", 48 },
        { typeof(WHV_RUN_VP_EXIT_CONTEXT), "IoPortAccess", 48 },
        { typeof(WHV_RUN_VP_EXIT_CONTEXT), "MsrAccess", 48 },
        { typeof(WHV_RUN_VP_EXIT_CONTEXT), "CpuidAccess", 48 },
        { typeof(WHV_RUN_VP_EXIT_CONTEXT), "VpException", 48 },
        { typeof(WHV_RUN_VP_EXIT_CONTEXT), "InterruptWindow", 48 },
        { typeof(WHV_RUN_VP_EXIT_CONTEXT), "UnsupportedFeature", 48 },
        { typeof(WHV_RUN_VP_EXIT_CONTEXT), "CancelReason", 48 },
        { typeof(WHV_RUN_VP_EXIT_CONTEXT), "Hypercall", 48 },

        { typeof(WHV_INTERRUPT_CONTROL), "Control", 0 },
        { typeof(WHV_INTERRUPT_CONTROL), "Destination", 8 },
        { typeof(WHV_INTERRUPT_CONTROL), "Vector", 12 },

        { typeof(WHV_TRANSLATE_GVA_RESULT), "ResultCode", 0 },
        { typeof(WHV_TRANSLATE_GVA_RESULT), "Reserved", 4 },

        { typeof(WHV_EMULATOR_STATUS), "AsUINT32", 0 },

        { typeof(WHV_EMULATOR_MEMORY_ACCESS_INFO), "GpaAddress", 0 },
        { typeof(WHV_EMULATOR_MEMORY_ACCESS_INFO), "Direction", 8 },
        { typeof(WHV_EMULATOR_MEMORY_ACCESS_INFO), "AccessSize", 9 },
        { typeof(WHV_EMULATOR_MEMORY_ACCESS_INFO), "Data", 10 },

        { typeof(WHV_EMULATOR_IO_ACCESS_INFO), "Direction", 0 },
        { typeof(WHV_EMULATOR_IO_ACCESS_INFO), "Port", 2 },
        { typeof(WHV_EMULATOR_IO_ACCESS_INFO), "AccessSize", 4 },
        { typeof(WHV_EMULATOR_IO_ACCESS_INFO), "Data", 8 },

        { typeof(WHV_EMULATOR_CALLBACKS), "Size", 0 },
        { typeof(WHV_EMULATOR_CALLBACKS), "Reserved", 4 },
        { typeof(WHV_EMULATOR_CALLBACKS), "WHvEmulatorIoPortCallback", 8 },
        { typeof(WHV_EMULATOR_CALLBACKS), "WHvEmulatorMemoryCallback", 16 },
        { typeof(WHV_EMULATOR_CALLBACKS), "WHvEmulatorGetVirtualProcessorRegisters", 24 },
        { typeof(WHV_EMULATOR_CALLBACKS), "WHvEmulatorSetVirtualProcessorRegisters", 32 },
        { typeof(WHV_EMULATOR_CALLBACKS), "WHvEmulatorTranslateGvaPage", 40 },
    };

    [Theory]
    [MemberData(nameof(Offsets))]
    public void Field_is_at_the_offset_of_the_sdk_header(Type type, string field, int expected) =>
        Assert.Equal(expected, (int)Marshal.OffsetOf(type, field));

    [Fact]
    public void Every_field_of_every_interop_struct_has_an_expected_offset()
    {
        // Guards the list above: a field added to a struct without an offset check fails here.
        var listed = Offsets.Select(row => ((Type)row.Data.Item1, (string)row.Data.Item2)).ToHashSet();
        var sized = Sizes.Select(row => (Type)row.Data.Item1).ToHashSet();
        foreach (var type in sized)
        {
            foreach (var f in type.GetFields(System.Reflection.BindingFlags.Instance | System.Reflection.BindingFlags.Public | System.Reflection.BindingFlags.NonPublic))
            {
                Assert.Contains((type, f.Name), listed);
            }
        }
    }

    [Fact]
    public void Exit_context_union_starts_at_its_documented_offset() =>
        Assert.Equal(WHV_RUN_VP_EXIT_CONTEXT.UnionOffset, (int)Marshal.OffsetOf<WHV_RUN_VP_EXIT_CONTEXT>(nameof(WHV_RUN_VP_EXIT_CONTEXT.IoPortAccess)));

    private static int ManagedSize(Type type) =>
        (int)typeof(Unsafe).GetMethod(nameof(Unsafe.SizeOf))!.MakeGenericMethod(type).Invoke(null, null)!;
}
