using System.Runtime.InteropServices;

namespace Virt.Cpu.Whp;

// Blittable mirrors of the x64 definitions in the Windows SDK header WinHvPlatformDefs.h. Names
// follow the header so the two can be compared field by field; offsets are asserted in the tests.
// These layouts are x64 only: on ARM64 Windows the same names have different shapes.

/// <summary>WHV_CAPABILITY_CODE.</summary>
internal enum WhvCapabilityCode : uint
{
    HypervisorPresent = 0x0000_0000,
    Features = 0x0000_0001,
    ExtendedVmExits = 0x0000_0002,
    ExceptionExitBitmap = 0x0000_0003,
    X64MsrExitBitmap = 0x0000_0004,
    ProcessorVendor = 0x0000_1000,
    ProcessorFeatures = 0x0000_1001,
    ProcessorClFlushSize = 0x0000_1002,
    ProcessorXsaveFeatures = 0x0000_1003,
    ProcessorClockFrequency = 0x0000_1004,
    InterruptClockFrequency = 0x0000_1005,
    ProcessorFeaturesBanks = 0x0000_1006,
}

/// <summary>WHV_PARTITION_PROPERTY_CODE.</summary>
internal enum WhvPartitionPropertyCode : uint
{
    ExtendedVmExits = 0x0000_0001,
    ExceptionExitBitmap = 0x0000_0002,
    SeparateSecurityDomain = 0x0000_0003,
    NestedVirtualization = 0x0000_0004,
    X64MsrExitBitmap = 0x0000_0005,
    ProcessorFeatures = 0x0000_1001,
    ProcessorClFlushSize = 0x0000_1002,
    CpuidExitList = 0x0000_1003,
    CpuidResultList = 0x0000_1004,
    LocalApicEmulationMode = 0x0000_1005,
    ProcessorXsaveFeatures = 0x0000_1006,
    ProcessorClockFrequency = 0x0000_1007,
    InterruptClockFrequency = 0x0000_1008,
    ApicRemoteReadSupport = 0x0000_1009,
    ProcessorFeaturesBanks = 0x0000_100A,
    ReferenceTime = 0x0000_100B,
    SyntheticProcessorFeaturesBanks = 0x0000_100C,
    CpuidResultList2 = 0x0000_100D,
    ProcessorPerfmonFeatures = 0x0000_100E,
    MsrActionList = 0x0000_100F,
    UnimplementedMsrAction = 0x0000_1010,
    PhysicalAddressWidth = 0x0000_1011,
    ProcessorCount = 0x0000_1FFF,
}

/// <summary>WHV_RUN_VP_EXIT_REASON (x64).</summary>
internal enum WhvRunVpExitReason : uint
{
    None = 0x0000_0000,
    MemoryAccess = 0x0000_0001,
    X64IoPortAccess = 0x0000_0002,
    UnrecoverableException = 0x0000_0004,
    InvalidVpRegisterValue = 0x0000_0005,
    UnsupportedFeature = 0x0000_0006,
    X64InterruptWindow = 0x0000_0007,
    X64Halt = 0x0000_0008,
    X64ApicEoi = 0x0000_0009,
    SynicSintDeliverable = 0x0000_000A,
    X64MsrAccess = 0x0000_1000,
    X64Cpuid = 0x0000_1001,
    Exception = 0x0000_1002,
    X64Rdtsc = 0x0000_1003,
    X64ApicSmiTrap = 0x0000_1004,
    Hypercall = 0x0000_1005,
    X64ApicInitSipiTrap = 0x0000_1006,
    X64ApicWriteTrap = 0x0000_1007,
    Canceled = 0x0000_2001,
}

/// <summary>WHV_MAP_GPA_RANGE_FLAGS.</summary>
[Flags]
internal enum WhvMapGpaRangeFlags : uint
{
    None = 0,
    Read = 0x1,
    Write = 0x2,
    Execute = 0x4,
    TrackDirtyPages = 0x8,
}

/// <summary>WHV_TRANSLATE_GVA_FLAGS.</summary>
[Flags]
internal enum WhvTranslateGvaFlags : uint
{
    None = 0,
    ValidateRead = 0x1,
    ValidateWrite = 0x2,
    ValidateExecute = 0x4,
    PrivilegeExempt = 0x8,
    SetPageTableBits = 0x10,
}

/// <summary>WHV_TRANSLATE_GVA_RESULT_CODE.</summary>
internal enum WhvTranslateGvaResultCode : uint
{
    Success = 0,
    PageNotPresent = 1,
    PrivilegeViolation = 2,
    InvalidPageTableFlags = 3,
    GpaUnmapped = 4,
    GpaNoReadAccess = 5,
    GpaNoWriteAccess = 6,
    GpaIllegalOverlayAccess = 7,
    Intercept = 8,
}

/// <summary>WHV_MEMORY_ACCESS_TYPE, the low two bits of WHV_MEMORY_ACCESS_INFO.</summary>
internal enum WhvMemoryAccessType : uint
{
    Read = 0,
    Write = 1,
    Execute = 2,
}

/// <summary>WHV_X64_PENDING_INTERRUPTION_TYPE.</summary>
internal enum WhvPendingInterruptionType : uint
{
    Interrupt = 0,
    Nmi = 2,
    Exception = 3,
}

/// <summary>Bits of WHV_EXTENDED_VM_EXITS.</summary>
internal static class WhvExtendedVmExits
{
    /// <summary>CPUID exits for the leaves in the partition's CPUID exit list.</summary>
    public const ulong X64CpuidExit = 1UL << 0;
    /// <summary>MSR exits for MSRs the hypervisor does not implement itself.</summary>
    public const ulong X64MsrExit = 1UL << 1;
    /// <summary>Exits for the exception vectors set in the exception exit bitmap.</summary>
    public const ulong ExceptionExit = 1UL << 2;

    /// <summary>WHV_X64_MSR_EXIT_BITMAP bit 0: exit only for MSRs the hypervisor does not implement.</summary>
    public const ulong MsrExitUnhandledMsrs = 1UL << 0;
}

/// <summary>WHV_X64_SEGMENT_REGISTER: 16 bytes.</summary>
[StructLayout(LayoutKind.Explicit, Size = 16)]
internal struct WHV_X64_SEGMENT_REGISTER
{
    [FieldOffset(0)] public ulong Base;
    [FieldOffset(8)] public uint Limit;
    [FieldOffset(12)] public ushort Selector;
    /// <summary>Type:4, NonSystemSegment:1, DPL:2, Present:1, Reserved:4, Available:1, Long:1, Default:1, Granularity:1.</summary>
    [FieldOffset(14)] public ushort Attributes;
}

/// <summary>WHV_X64_TABLE_REGISTER: 16 bytes.</summary>
[StructLayout(LayoutKind.Explicit, Size = 16)]
internal unsafe struct WHV_X64_TABLE_REGISTER
{
    [FieldOffset(0)] public fixed ushort Pad[3];
    [FieldOffset(6)] public ushort Limit;
    [FieldOffset(8)] public ulong Base;
}

/// <summary>WHV_X64_FP_CONTROL_STATUS_REGISTER: 16 bytes, the x87 part of the FXSAVE header.</summary>
[StructLayout(LayoutKind.Explicit, Size = 16)]
internal struct WHV_X64_FP_CONTROL_STATUS_REGISTER
{
    [FieldOffset(0)] public ushort FpControl;
    [FieldOffset(2)] public ushort FpStatus;
    /// <summary>The abridged (one bit per register) tag word.</summary>
    [FieldOffset(4)] public byte FpTag;
    [FieldOffset(5)] public byte Reserved;
    [FieldOffset(6)] public ushort LastFpOp;
    [FieldOffset(8)] public ulong LastFpRip;
}

/// <summary>WHV_X64_XMM_CONTROL_STATUS_REGISTER: 16 bytes, the SSE part of the FXSAVE header.</summary>
[StructLayout(LayoutKind.Explicit, Size = 16)]
internal struct WHV_X64_XMM_CONTROL_STATUS_REGISTER
{
    [FieldOffset(0)] public ulong LastFpRdp;
    [FieldOffset(8)] public uint XmmStatusControl;
    [FieldOffset(12)] public uint XmmStatusControlMask;
}

/// <summary>
/// WHV_REGISTER_VALUE: a 16-byte union. The header aligns it to 16 bytes (through WHV_UINT128);
/// arrays of it passed to the API are allocated 16-byte aligned by the callers in this package.
/// </summary>
[StructLayout(LayoutKind.Explicit, Size = 16)]
internal struct WHV_REGISTER_VALUE
{
    [FieldOffset(0)] public ulong Low64;
    [FieldOffset(8)] public ulong High64;
    [FieldOffset(0)] public ulong Reg64;
    [FieldOffset(0)] public uint Reg32;
    [FieldOffset(0)] public ushort Reg16;
    [FieldOffset(0)] public byte Reg8;
    [FieldOffset(0)] public WHV_X64_SEGMENT_REGISTER Segment;
    [FieldOffset(0)] public WHV_X64_TABLE_REGISTER Table;
    [FieldOffset(0)] public WHV_X64_FP_CONTROL_STATUS_REGISTER FpControlStatus;
    [FieldOffset(0)] public WHV_X64_XMM_CONTROL_STATUS_REGISTER XmmControlStatus;
    /// <summary>WHV_X64_PENDING_INTERRUPTION_REGISTER (see <see cref="WhvPendingInterruption"/>).</summary>
    [FieldOffset(0)] public ulong PendingInterruption;
    /// <summary>WHV_X64_INTERRUPT_STATE_REGISTER: bit 0 interrupt shadow, bit 1 NMI masked.</summary>
    [FieldOffset(0)] public ulong InterruptState;
    /// <summary>WHV_X64_DELIVERABILITY_NOTIFICATIONS_REGISTER: bit 0 NMI, bit 1 interrupt, bits 2-5 priority.</summary>
    [FieldOffset(0)] public ulong DeliverabilityNotifications;
}

/// <summary>WHV_CAPABILITY: the largest member on x64 is WHV_PROCESSOR_FEATURES_BANKS (24 bytes).</summary>
[StructLayout(LayoutKind.Explicit, Size = 24)]
internal struct WHV_CAPABILITY
{
    /// <summary>A Win32 BOOL (4 bytes).</summary>
    [FieldOffset(0)] public int HypervisorPresent;
    [FieldOffset(0)] public ulong Features;
    [FieldOffset(0)] public ulong ExtendedVmExits;
    [FieldOffset(0)] public uint ProcessorVendor;
    [FieldOffset(0)] public ulong ProcessorFeatures;
    [FieldOffset(0)] public byte ProcessorClFlushSize;
    [FieldOffset(0)] public ulong ProcessorClockFrequency;
    [FieldOffset(0)] public ulong ExceptionExitBitmap;
    /// <summary>WHV_PROCESSOR_FEATURES_BANKS.BanksCount.</summary>
    [FieldOffset(0)] public uint BanksCount;
    /// <summary>WHV_PROCESSOR_FEATURES_BANKS.Bank0.</summary>
    [FieldOffset(8)] public ulong Bank0;
    /// <summary>WHV_PROCESSOR_FEATURES_BANKS.Bank1.</summary>
    [FieldOffset(16)] public ulong Bank1;
}

/// <summary>WHV_PARTITION_PROPERTY: the largest member on x64 is one WHV_X64_CPUID_RESULT2 (48 bytes).</summary>
[StructLayout(LayoutKind.Explicit, Size = 48)]
internal struct WHV_PARTITION_PROPERTY
{
    [FieldOffset(0)] public ulong ExtendedVmExits;
    [FieldOffset(0)] public ulong ProcessorFeatures;
    [FieldOffset(0)] public byte ProcessorClFlushSize;
    [FieldOffset(0)] public uint ProcessorCount;
    [FieldOffset(0)] public int SeparateSecurityDomain;
    [FieldOffset(0)] public ulong ExceptionExitBitmap;
    [FieldOffset(0)] public ulong X64MsrExitBitmap;
    /// <summary>WHV_X64_LOCAL_APIC_EMULATION_MODE: 0 none, 1 xAPIC, 2 x2APIC.</summary>
    [FieldOffset(0)] public uint LocalApicEmulationMode;
}

/// <summary>WHV_X64_CPUID_RESULT: 32 bytes, one entry of the partition's CPUID result list.</summary>
[StructLayout(LayoutKind.Explicit, Size = 32)]
internal unsafe struct WHV_X64_CPUID_RESULT
{
    [FieldOffset(0)] public uint Function;
    [FieldOffset(4)] public fixed uint Reserved[3];
    [FieldOffset(16)] public uint Eax;
    [FieldOffset(20)] public uint Ebx;
    [FieldOffset(24)] public uint Ecx;
    [FieldOffset(28)] public uint Edx;
}

/// <summary>WHV_X64_VP_EXIT_CONTEXT (WHV_VP_EXIT_CONTEXT on x64): 40 bytes.</summary>
[StructLayout(LayoutKind.Explicit, Size = 40)]
internal struct WHV_VP_EXIT_CONTEXT
{
    /// <summary>WHV_X64_VP_EXECUTION_STATE: Cpl:2, Cr0Pe:1, Cr0Am:1, EferLma:1, DebugActive:1, InterruptionPending:1, Reserved:5, InterruptShadow:1.</summary>
    [FieldOffset(0)] public ushort ExecutionState;
    /// <summary>InstructionLength:4 (low nibble), Cr8:4 (high nibble).</summary>
    [FieldOffset(2)] public byte InstructionLengthCr8;
    [FieldOffset(3)] public byte Reserved;
    [FieldOffset(4)] public uint Reserved2;
    [FieldOffset(8)] public WHV_X64_SEGMENT_REGISTER Cs;
    [FieldOffset(24)] public ulong Rip;
    [FieldOffset(32)] public ulong Rflags;

    public readonly int InstructionLength => InstructionLengthCr8 & 0xF;

    public readonly bool LongModeActive => (ExecutionState & (1 << 4)) != 0;

    public readonly bool ProtectedMode => (ExecutionState & (1 << 2)) != 0;
}

/// <summary>WHV_MEMORY_ACCESS_CONTEXT (x64): 40 bytes.</summary>
[StructLayout(LayoutKind.Explicit, Size = 40)]
internal unsafe struct WHV_MEMORY_ACCESS_CONTEXT
{
    [FieldOffset(0)] public byte InstructionByteCount;
    [FieldOffset(1)] public fixed byte Reserved[3];
    [FieldOffset(4)] public fixed byte InstructionBytes[16];
    /// <summary>WHV_MEMORY_ACCESS_INFO: AccessType:2, GpaUnmapped:1, GvaValid:1.</summary>
    [FieldOffset(20)] public uint AccessInfo;
    [FieldOffset(24)] public ulong Gpa;
    [FieldOffset(32)] public ulong Gva;

    public readonly WhvMemoryAccessType AccessType => (WhvMemoryAccessType)(AccessInfo & 0x3);

    public readonly bool GpaUnmapped => (AccessInfo & (1 << 2)) != 0;
}

/// <summary>WHV_X64_IO_PORT_ACCESS_CONTEXT: 96 bytes.</summary>
[StructLayout(LayoutKind.Explicit, Size = 96)]
internal unsafe struct WHV_X64_IO_PORT_ACCESS_CONTEXT
{
    [FieldOffset(0)] public byte InstructionByteCount;
    [FieldOffset(1)] public fixed byte Reserved[3];
    [FieldOffset(4)] public fixed byte InstructionBytes[16];
    /// <summary>WHV_X64_IO_PORT_ACCESS_INFO: IsWrite:1, AccessSize:3, StringOp:1, RepPrefix:1.</summary>
    [FieldOffset(20)] public uint AccessInfo;
    [FieldOffset(24)] public ushort PortNumber;
    [FieldOffset(26)] public fixed ushort Reserved2[3];
    [FieldOffset(32)] public ulong Rax;
    [FieldOffset(40)] public ulong Rcx;
    [FieldOffset(48)] public ulong Rsi;
    [FieldOffset(56)] public ulong Rdi;
    [FieldOffset(64)] public WHV_X64_SEGMENT_REGISTER Ds;
    [FieldOffset(80)] public WHV_X64_SEGMENT_REGISTER Es;

    public readonly bool IsWrite => (AccessInfo & 1) != 0;

    public readonly int AccessSize => (int)((AccessInfo >> 1) & 0x7);

    public readonly bool StringOp => (AccessInfo & (1 << 4)) != 0;

    public readonly bool RepPrefix => (AccessInfo & (1 << 5)) != 0;
}

/// <summary>WHV_X64_MSR_ACCESS_CONTEXT: 24 bytes.</summary>
[StructLayout(LayoutKind.Explicit, Size = 24)]
internal struct WHV_X64_MSR_ACCESS_CONTEXT
{
    /// <summary>WHV_X64_MSR_ACCESS_INFO: IsWrite:1.</summary>
    [FieldOffset(0)] public uint AccessInfo;
    [FieldOffset(4)] public uint MsrNumber;
    [FieldOffset(8)] public ulong Rax;
    [FieldOffset(16)] public ulong Rdx;

    public readonly bool IsWrite => (AccessInfo & 1) != 0;
}

/// <summary>WHV_X64_CPUID_ACCESS_CONTEXT: 64 bytes.</summary>
[StructLayout(LayoutKind.Explicit, Size = 64)]
internal struct WHV_X64_CPUID_ACCESS_CONTEXT
{
    [FieldOffset(0)] public ulong Rax;
    [FieldOffset(8)] public ulong Rcx;
    [FieldOffset(16)] public ulong Rdx;
    [FieldOffset(24)] public ulong Rbx;
    [FieldOffset(32)] public ulong DefaultResultRax;
    [FieldOffset(40)] public ulong DefaultResultRcx;
    [FieldOffset(48)] public ulong DefaultResultRdx;
    [FieldOffset(56)] public ulong DefaultResultRbx;
}

/// <summary>WHV_VP_EXCEPTION_CONTEXT (x64): 40 bytes.</summary>
[StructLayout(LayoutKind.Explicit, Size = 40)]
internal unsafe struct WHV_VP_EXCEPTION_CONTEXT
{
    [FieldOffset(0)] public byte InstructionByteCount;
    [FieldOffset(1)] public fixed byte Reserved[3];
    [FieldOffset(4)] public fixed byte InstructionBytes[16];
    /// <summary>WHV_VP_EXCEPTION_INFO: ErrorCodeValid:1, SoftwareException:1.</summary>
    [FieldOffset(20)] public uint ExceptionInfo;
    [FieldOffset(24)] public byte ExceptionType;
    [FieldOffset(25)] public fixed byte Reserved2[3];
    [FieldOffset(28)] public uint ErrorCode;
    [FieldOffset(32)] public ulong ExceptionParameter;
}

/// <summary>WHV_X64_INTERRUPTION_DELIVERABLE_CONTEXT: 4 bytes.</summary>
[StructLayout(LayoutKind.Explicit, Size = 4)]
internal struct WHV_X64_INTERRUPTION_DELIVERABLE_CONTEXT
{
    [FieldOffset(0)] public WhvPendingInterruptionType DeliverableType;
}

/// <summary>WHV_X64_UNSUPPORTED_FEATURE_CONTEXT: 16 bytes.</summary>
[StructLayout(LayoutKind.Explicit, Size = 16)]
internal struct WHV_X64_UNSUPPORTED_FEATURE_CONTEXT
{
    /// <summary>WHV_X64_UNSUPPORTED_FEATURE_CODE: 1 intercept, 2 task switch through a TSS.</summary>
    [FieldOffset(0)] public uint FeatureCode;
    [FieldOffset(4)] public uint Reserved;
    [FieldOffset(8)] public ulong FeatureParameter;
}

/// <summary>WHV_RUN_VP_CANCELED_CONTEXT: 4 bytes.</summary>
[StructLayout(LayoutKind.Explicit, Size = 4)]
internal struct WHV_RUN_VP_CANCELED_CONTEXT
{
    /// <summary>WHV_RUN_VP_CANCEL_REASON: 0 = user (WHvCancelRunVirtualProcessor).</summary>
    [FieldOffset(0)] public uint CancelReason;
}

/// <summary>WHV_X64_HYPERCALL_CONTEXT: 176 bytes (the general registers the guest passed).</summary>
[StructLayout(LayoutKind.Explicit, Size = 176)]
internal struct WHV_HYPERCALL_CONTEXT
{
    [FieldOffset(0)] public ulong Rax;
    [FieldOffset(8)] public ulong Rbx;
    [FieldOffset(16)] public ulong Rcx;
    [FieldOffset(24)] public ulong Rdx;
    [FieldOffset(32)] public ulong R8;
    [FieldOffset(40)] public ulong Rsi;
    [FieldOffset(48)] public ulong Rdi;
}

/// <summary>WHV_RUN_VP_EXIT_CONTEXT (x64): 224 bytes; the union of exit-specific contexts starts at 48.</summary>
[StructLayout(LayoutKind.Explicit, Size = 224)]
internal struct WHV_RUN_VP_EXIT_CONTEXT
{
    /// <summary>Offset of the union of exit-specific contexts.</summary>
    public const int UnionOffset = 48;

    [FieldOffset(0)] public WhvRunVpExitReason ExitReason;
    [FieldOffset(4)] public uint Reserved;
    [FieldOffset(8)] public WHV_VP_EXIT_CONTEXT VpContext;
    [FieldOffset(48)] public WHV_MEMORY_ACCESS_CONTEXT MemoryAccess;
    [FieldOffset(48)] public WHV_X64_IO_PORT_ACCESS_CONTEXT IoPortAccess;
    [FieldOffset(48)] public WHV_X64_MSR_ACCESS_CONTEXT MsrAccess;
    [FieldOffset(48)] public WHV_X64_CPUID_ACCESS_CONTEXT CpuidAccess;
    [FieldOffset(48)] public WHV_VP_EXCEPTION_CONTEXT VpException;
    [FieldOffset(48)] public WHV_X64_INTERRUPTION_DELIVERABLE_CONTEXT InterruptWindow;
    [FieldOffset(48)] public WHV_X64_UNSUPPORTED_FEATURE_CONTEXT UnsupportedFeature;
    [FieldOffset(48)] public WHV_RUN_VP_CANCELED_CONTEXT CancelReason;
    [FieldOffset(48)] public WHV_HYPERCALL_CONTEXT Hypercall;
}

/// <summary>WHV_INTERRUPT_CONTROL (x64): 16 bytes, the argument of WHvRequestInterrupt.</summary>
[StructLayout(LayoutKind.Explicit, Size = 16)]
internal struct WHV_INTERRUPT_CONTROL
{
    /// <summary>Type:8 (WHV_INTERRUPT_TYPE), DestinationMode:4, TriggerMode:4, TargetVtl:8, Reserved:40.</summary>
    [FieldOffset(0)] public ulong Control;
    [FieldOffset(8)] public uint Destination;
    [FieldOffset(12)] public uint Vector;
}

/// <summary>WHV_EMULATOR_STATUS: a 32-bit bit field.</summary>
[StructLayout(LayoutKind.Explicit, Size = 4)]
internal struct WHV_EMULATOR_STATUS
{
    public const uint EmulationSuccessful = 1u << 0;
    public const uint InternalEmulationFailure = 1u << 1;
    public const uint IoPortCallbackFailed = 1u << 2;
    public const uint MemoryCallbackFailed = 1u << 3;
    public const uint TranslateGvaPageCallbackFailed = 1u << 4;
    public const uint TranslateGvaPageCallbackGpaIsNotAligned = 1u << 5;
    public const uint GetVirtualProcessorRegistersCallbackFailed = 1u << 6;
    public const uint SetVirtualProcessorRegistersCallbackFailed = 1u << 7;
    public const uint InterruptCausedIntercept = 1u << 8;
    public const uint GuestCannotBeFaulted = 1u << 9;

    [FieldOffset(0)] public uint AsUINT32;

    public readonly bool Succeeded => (AsUINT32 & EmulationSuccessful) != 0;
}

/// <summary>WHV_EMULATOR_MEMORY_ACCESS_INFO: 24 bytes (18 used, padded to 8-byte alignment).</summary>
[StructLayout(LayoutKind.Explicit, Size = 24)]
internal unsafe struct WHV_EMULATOR_MEMORY_ACCESS_INFO
{
    [FieldOffset(0)] public ulong GpaAddress;
    /// <summary>0 = read, 1 = write.</summary>
    [FieldOffset(8)] public byte Direction;
    [FieldOffset(9)] public byte AccessSize;
    [FieldOffset(10)] public fixed byte Data[8];
}

/// <summary>WHV_EMULATOR_IO_ACCESS_INFO: 12 bytes.</summary>
[StructLayout(LayoutKind.Explicit, Size = 12)]
internal struct WHV_EMULATOR_IO_ACCESS_INFO
{
    /// <summary>0 = read (IN), 1 = write (OUT).</summary>
    [FieldOffset(0)] public byte Direction;
    [FieldOffset(2)] public ushort Port;
    [FieldOffset(4)] public ushort AccessSize;
    [FieldOffset(8)] public uint Data;
}

/// <summary>WHV_EMULATOR_CALLBACKS: 48 bytes (a size header and five function pointers).</summary>
[StructLayout(LayoutKind.Explicit, Size = 48)]
internal unsafe struct WHV_EMULATOR_CALLBACKS
{
    [FieldOffset(0)] public uint Size;
    [FieldOffset(4)] public uint Reserved;
    [FieldOffset(8)] public delegate* unmanaged<void*, WHV_EMULATOR_IO_ACCESS_INFO*, int> WHvEmulatorIoPortCallback;
    [FieldOffset(16)] public delegate* unmanaged<void*, WHV_EMULATOR_MEMORY_ACCESS_INFO*, int> WHvEmulatorMemoryCallback;
    [FieldOffset(24)] public delegate* unmanaged<void*, WhvRegisterName*, uint, WHV_REGISTER_VALUE*, int> WHvEmulatorGetVirtualProcessorRegisters;
    [FieldOffset(32)] public delegate* unmanaged<void*, WhvRegisterName*, uint, WHV_REGISTER_VALUE*, int> WHvEmulatorSetVirtualProcessorRegisters;
    [FieldOffset(40)] public delegate* unmanaged<void*, ulong, WhvTranslateGvaFlags, WhvTranslateGvaResultCode*, ulong*, int> WHvEmulatorTranslateGvaPage;
}

/// <summary>WHV_TRANSLATE_GVA_RESULT: 8 bytes.</summary>
[StructLayout(LayoutKind.Explicit, Size = 8)]
internal struct WHV_TRANSLATE_GVA_RESULT
{
    [FieldOffset(0)] public WhvTranslateGvaResultCode ResultCode;
    [FieldOffset(4)] public uint Reserved;
}

/// <summary>Field helpers for WHV_X64_PENDING_INTERRUPTION_REGISTER.</summary>
internal static class WhvPendingInterruption
{
    /// <summary>Builds the register value: pending, type, optional error code, vector.</summary>
    public static ulong Create(WhvPendingInterruptionType type, byte vector, uint? errorCode = null)
    {
        ulong v = 1; // InterruptionPending
        v |= ((ulong)type & 0x7) << 1;
        if (errorCode is uint code)
        {
            v |= 1UL << 4; // DeliverErrorCode
            v |= (ulong)code << 32;
        }

        v |= (ulong)vector << 16;
        return v;
    }

    public static bool IsPending(ulong value) => (value & 1) != 0;
}
