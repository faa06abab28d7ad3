using Virt.Cpu.Whp;
using Xunit;

namespace Virt.Cpu.Whp.Tests.Interop;

/// <summary>WHV_REGISTER_NAME and the other enums against the values in WinHvPlatformDefs.h.</summary>
public sealed class RegisterNameTests
{
    public static TheoryData<uint, uint> RegisterNames => new()
    {
        { (uint)WhvRegisterName.Rax, 0x00 }, { (uint)WhvRegisterName.Rcx, 0x01 }, { (uint)WhvRegisterName.Rdx, 0x02 }, { (uint)WhvRegisterName.Rbx, 0x03 },
        { (uint)WhvRegisterName.Rsp, 0x04 }, { (uint)WhvRegisterName.Rbp, 0x05 }, { (uint)WhvRegisterName.Rsi, 0x06 }, { (uint)WhvRegisterName.Rdi, 0x07 },
        { (uint)WhvRegisterName.R8, 0x08 }, { (uint)WhvRegisterName.R9, 0x09 }, { (uint)WhvRegisterName.R10, 0x0A }, { (uint)WhvRegisterName.R11, 0x0B },
        { (uint)WhvRegisterName.R12, 0x0C }, { (uint)WhvRegisterName.R13, 0x0D }, { (uint)WhvRegisterName.R14, 0x0E }, { (uint)WhvRegisterName.R15, 0x0F },
        { (uint)WhvRegisterName.Rip, 0x10 }, { (uint)WhvRegisterName.Rflags, 0x11 },
        { (uint)WhvRegisterName.Es, 0x12 }, { (uint)WhvRegisterName.Cs, 0x13 }, { (uint)WhvRegisterName.Ss, 0x14 }, { (uint)WhvRegisterName.Ds, 0x15 },
        { (uint)WhvRegisterName.Fs, 0x16 }, { (uint)WhvRegisterName.Gs, 0x17 }, { (uint)WhvRegisterName.Ldtr, 0x18 }, { (uint)WhvRegisterName.Tr, 0x19 },
        { (uint)WhvRegisterName.Idtr, 0x1A }, { (uint)WhvRegisterName.Gdtr, 0x1B },
        { (uint)WhvRegisterName.Cr0, 0x1C }, { (uint)WhvRegisterName.Cr2, 0x1D }, { (uint)WhvRegisterName.Cr3, 0x1E }, { (uint)WhvRegisterName.Cr4, 0x1F },
        { (uint)WhvRegisterName.Cr8, 0x20 },
        { (uint)WhvRegisterName.Dr0, 0x21 }, { (uint)WhvRegisterName.Dr1, 0x22 }, { (uint)WhvRegisterName.Dr2, 0x23 }, { (uint)WhvRegisterName.Dr3, 0x24 },
        { (uint)WhvRegisterName.Dr6, 0x25 }, { (uint)WhvRegisterName.Dr7, 0x26 }, { (uint)WhvRegisterName.XCr0, 0x27 },
        { (uint)WhvRegisterName.Xmm0, 0x1000 }, { (uint)WhvRegisterName.Xmm15, 0x100F },
        { (uint)WhvRegisterName.FpMmx0, 0x1010 }, { (uint)WhvRegisterName.FpMmx7, 0x1017 },
        { (uint)WhvRegisterName.FpControlStatus, 0x1018 }, { (uint)WhvRegisterName.XmmControlStatus, 0x1019 },
        { (uint)WhvRegisterName.Tsc, 0x2000 }, { (uint)WhvRegisterName.Efer, 0x2001 }, { (uint)WhvRegisterName.KernelGsBase, 0x2002 },
        { (uint)WhvRegisterName.ApicBase, 0x2003 }, { (uint)WhvRegisterName.Pat, 0x2004 }, { (uint)WhvRegisterName.SysenterCs, 0x2005 },
        { (uint)WhvRegisterName.SysenterEip, 0x2006 }, { (uint)WhvRegisterName.SysenterEsp, 0x2007 }, { (uint)WhvRegisterName.Star, 0x2008 },
        { (uint)WhvRegisterName.Lstar, 0x2009 }, { (uint)WhvRegisterName.Cstar, 0x200A }, { (uint)WhvRegisterName.Sfmask, 0x200B },
        { (uint)WhvRegisterName.InitialApicId, 0x200C }, { (uint)WhvRegisterName.MsrMtrrCap, 0x200D }, { (uint)WhvRegisterName.MsrMtrrDefType, 0x200E },
        { (uint)WhvRegisterName.TscAux, 0x207B }, { (uint)WhvRegisterName.TscDeadline, 0x2095 }, { (uint)WhvRegisterName.MsrIa32MiscEnable, 0x20A0 },
        { (uint)WhvRegisterName.ApicId, 0x3002 }, { (uint)WhvRegisterName.ApicVersion, 0x3003 },
        { (uint)WhvRegisterName.PendingInterruption, 0x8000_0000 }, { (uint)WhvRegisterName.InterruptState, 0x8000_0001 },
        { (uint)WhvRegisterName.PendingEvent, 0x8000_0002 }, { (uint)WhvRegisterName.DeliverabilityNotifications, 0x8000_0004 },
        { (uint)WhvRegisterName.InternalActivityState, 0x8000_0005 },
    };

    [Theory]
    [MemberData(nameof(RegisterNames))]
    public void Register_name_has_the_sdk_value(uint name, uint expected) => Assert.Equal(expected, name);

    [Fact]
    public void Every_register_name_is_checked_against_the_header()
    {
        var checkedNames = RegisterNames.Select(r => (WhvRegisterName)(uint)r.Data.Item1).ToHashSet();
        Assert.All(Enum.GetValues<WhvRegisterName>(), n => Assert.Contains(n, checkedNames));
    }

    [Fact]
    public void Register_names_are_four_bytes_like_the_c_enum() =>
        Assert.Equal(4, System.Runtime.CompilerServices.Unsafe.SizeOf<WhvRegisterName>());

    [Theory]
    [InlineData((uint)WhvRunVpExitReason.None, 0x0)]
    [InlineData((uint)WhvRunVpExitReason.MemoryAccess, 0x1)]
    [InlineData((uint)WhvRunVpExitReason.X64IoPortAccess, 0x2)]
    [InlineData((uint)WhvRunVpExitReason.UnrecoverableException, 0x4)]
    [InlineData((uint)WhvRunVpExitReason.InvalidVpRegisterValue, 0x5)]
    [InlineData((uint)WhvRunVpExitReason.UnsupportedFeature, 0x6)]
    [InlineData((uint)WhvRunVpExitReason.X64InterruptWindow, 0x7)]
    [InlineData((uint)WhvRunVpExitReason.X64Halt, 0x8)]
    [InlineData((uint)WhvRunVpExitReason.X64ApicEoi, 0x9)]
    [InlineData((uint)WhvRunVpExitReason.SynicSintDeliverable, 0xA)]
    [InlineData((uint)WhvRunVpExitReason.X64MsrAccess, 0x1000)]
    [InlineData((uint)WhvRunVpExitReason.X64Cpuid, 0x1001)]
    [InlineData((uint)WhvRunVpExitReason.Exception, 0x1002)]
    [InlineData((uint)WhvRunVpExitReason.X64Rdtsc, 0x1003)]
    [InlineData((uint)WhvRunVpExitReason.X64ApicSmiTrap, 0x1004)]
    [InlineData((uint)WhvRunVpExitReason.Hypercall, 0x1005)]
    [InlineData((uint)WhvRunVpExitReason.X64ApicInitSipiTrap, 0x1006)]
    [InlineData((uint)WhvRunVpExitReason.X64ApicWriteTrap, 0x1007)]
    [InlineData((uint)WhvRunVpExitReason.Canceled, 0x2001)]
    public void Exit_reason_has_the_sdk_value(uint reason, uint expected) => Assert.Equal(expected, reason);

    [Theory]
    [InlineData((uint)WhvCapabilityCode.HypervisorPresent, 0x0)]
    [InlineData((uint)WhvCapabilityCode.Features, 0x1)]
    [InlineData((uint)WhvCapabilityCode.ExtendedVmExits, 0x2)]
    [InlineData((uint)WhvCapabilityCode.ExceptionExitBitmap, 0x3)]
    [InlineData((uint)WhvCapabilityCode.X64MsrExitBitmap, 0x4)]
    [InlineData((uint)WhvCapabilityCode.ProcessorVendor, 0x1000)]
    [InlineData((uint)WhvCapabilityCode.ProcessorFeatures, 0x1001)]
    [InlineData((uint)WhvCapabilityCode.ProcessorClFlushSize, 0x1002)]
    [InlineData((uint)WhvCapabilityCode.ProcessorXsaveFeatures, 0x1003)]
    [InlineData((uint)WhvCapabilityCode.ProcessorClockFrequency, 0x1004)]
    [InlineData((uint)WhvCapabilityCode.InterruptClockFrequency, 0x1005)]
    [InlineData((uint)WhvCapabilityCode.ProcessorFeaturesBanks, 0x1006)]
    public void Capability_code_has_the_sdk_value(uint code, uint expected) => Assert.Equal(expected, code);

    [Theory]
    [InlineData((uint)WhvPartitionPropertyCode.ExtendedVmExits, 0x1)]
    [InlineData((uint)WhvPartitionPropertyCode.ExceptionExitBitmap, 0x2)]
    [InlineData((uint)WhvPartitionPropertyCode.SeparateSecurityDomain, 0x3)]
    [InlineData((uint)WhvPartitionPropertyCode.NestedVirtualization, 0x4)]
    [InlineData((uint)WhvPartitionPropertyCode.X64MsrExitBitmap, 0x5)]
    [InlineData((uint)WhvPartitionPropertyCode.ProcessorFeatures, 0x1001)]
    [InlineData((uint)WhvPartitionPropertyCode.ProcessorClFlushSize, 0x1002)]
    [InlineData((uint)WhvPartitionPropertyCode.CpuidExitList, 0x1003)]
    [InlineData((uint)WhvPartitionPropertyCode.CpuidResultList, 0x1004)]
    [InlineData((uint)WhvPartitionPropertyCode.LocalApicEmulationMode, 0x1005)]
    [InlineData((uint)WhvPartitionPropertyCode.ProcessorXsaveFeatures, 0x1006)]
    [InlineData((uint)WhvPartitionPropertyCode.ProcessorClockFrequency, 0x1007)]
    [InlineData((uint)WhvPartitionPropertyCode.InterruptClockFrequency, 0x1008)]
    [InlineData((uint)WhvPartitionPropertyCode.ApicRemoteReadSupport, 0x1009)]
    [InlineData((uint)WhvPartitionPropertyCode.ProcessorFeaturesBanks, 0x100A)]
    [InlineData((uint)WhvPartitionPropertyCode.ReferenceTime, 0x100B)]
    [InlineData((uint)WhvPartitionPropertyCode.SyntheticProcessorFeaturesBanks, 0x100C)]
    [InlineData((uint)WhvPartitionPropertyCode.CpuidResultList2, 0x100D)]
    [InlineData((uint)WhvPartitionPropertyCode.ProcessorPerfmonFeatures, 0x100E)]
    [InlineData((uint)WhvPartitionPropertyCode.MsrActionList, 0x100F)]
    [InlineData((uint)WhvPartitionPropertyCode.UnimplementedMsrAction, 0x1010)]
    [InlineData((uint)WhvPartitionPropertyCode.PhysicalAddressWidth, 0x1011)]
    [InlineData((uint)WhvPartitionPropertyCode.ProcessorCount, 0x1FFF)]
    public void Partition_property_code_has_the_sdk_value(uint code, uint expected) => Assert.Equal(expected, code);

    [Fact]
    public void Map_and_translate_flags_have_the_sdk_values()
    {
        Assert.Equal(0x1u, (uint)WhvMapGpaRangeFlags.Read);
        Assert.Equal(0x2u, (uint)WhvMapGpaRangeFlags.Write);
        Assert.Equal(0x4u, (uint)WhvMapGpaRangeFlags.Execute);
        Assert.Equal(0x8u, (uint)WhvMapGpaRangeFlags.TrackDirtyPages);
        Assert.Equal(0x1u, (uint)WhvTranslateGvaFlags.ValidateRead);
        Assert.Equal(0x2u, (uint)WhvTranslateGvaFlags.ValidateWrite);
        Assert.Equal(0x4u, (uint)WhvTranslateGvaFlags.ValidateExecute);
        Assert.Equal(0x8u, (uint)WhvTranslateGvaFlags.PrivilegeExempt);
        Assert.Equal(0x10u, (uint)WhvTranslateGvaFlags.SetPageTableBits);
        Assert.Equal(8u, (uint)WhvTranslateGvaResultCode.Intercept);
        Assert.Equal(3u, (uint)WhvPendingInterruptionType.Exception);
        Assert.Equal(2u, (uint)WhvPendingInterruptionType.Nmi);
    }

    [Fact]
    public void Pending_interruption_register_packs_fields_as_the_header_bit_fields()
    {
        // InterruptionPending:1, InterruptionType:3, DeliverErrorCode:1, InstructionLength:4, NestedEvent:1, Reserved:6, InterruptionVector:16, ErrorCode:32
        ulong gp = WhvPendingInterruption.Create(WhvPendingInterruptionType.Exception, 13, 0x1234);
        Assert.Equal(1UL, gp & 1);
        Assert.Equal(3UL, (gp >> 1) & 7);
        Assert.Equal(1UL, (gp >> 4) & 1);
        Assert.Equal(13UL, (gp >> 16) & 0xFFFF);
        Assert.Equal(0x1234UL, gp >> 32);

        ulong irq = WhvPendingInterruption.Create(WhvPendingInterruptionType.Interrupt, 0x30);
        Assert.Equal(0x0030_0001UL, irq);
        Assert.True(WhvPendingInterruption.IsPending(irq));
        Assert.False(WhvPendingInterruption.IsPending(0));
    }
}
