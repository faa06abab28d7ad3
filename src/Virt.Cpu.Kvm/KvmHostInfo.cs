using static Virt.Cpu.Kvm.Interop.Kvm;

namespace Virt.Cpu.Kvm;

/// <summary>What <c>/dev/kvm</c> reports about this host. Constant for the life of the process, so read once.</summary>
internal sealed class KvmHostInfo
{
    private static readonly Lock s_lock = new();
    private static KvmHostInfo? s_instance;

    private KvmHostInfo(KvmSystemHandle kvm)
    {
        VcpuMmapSize = KvmIoctls.GetVcpuMmapSize(kvm);
        SupportedCpuid = KvmIoctls.GetSupportedCpuid(kvm);
        SupportedMsrs = KvmIoctls.GetMsrIndexList(kvm);
        MsrSet = [.. SupportedMsrs];
        HasReadOnlyMemory = KvmIoctls.CheckExtension(kvm, KVM_CAP_READONLY_MEM) > 0;
        HasIrqchip = KvmIoctls.CheckExtension(kvm, KVM_CAP_IRQCHIP) > 0;
        HasPit2 = KvmIoctls.CheckExtension(kvm, KVM_CAP_PIT2) > 0;
        HasSyncGeneralRegisters = ((ulong)Math.Max(0, KvmIoctls.CheckExtension(kvm, KVM_CAP_SYNC_REGS)) & KVM_SYNC_X86_REGS) != 0;
        HasSetTssAddr = KvmIoctls.CheckExtension(kvm, KVM_CAP_SET_TSS_ADDR) > 0;
        HasSetIdentityMapAddr = KvmIoctls.CheckExtension(kvm, KVM_CAP_SET_IDENTITY_MAP_ADDR) > 0;
        HasXsave = KvmIoctls.CheckExtension(kvm, KVM_CAP_XSAVE) > 0;
        HasXcrs = KvmIoctls.CheckExtension(kvm, KVM_CAP_XCRS) > 0;
        HasDebugRegisters = KvmIoctls.CheckExtension(kvm, KVM_CAP_DEBUGREGS) > 0;
        HasGuestDebug = KvmIoctls.CheckExtension(kvm, KVM_CAP_SET_GUEST_DEBUG) > 0;
        HasVcpuEvents = KvmIoctls.CheckExtension(kvm, KVM_CAP_VCPU_EVENTS) > 0;
        HasMpState = KvmIoctls.CheckExtension(kvm, KVM_CAP_MP_STATE) > 0;
        McgCapSupported = KvmIoctls.CheckExtension(kvm, KVM_CAP_MCE) > 0 ? KvmIoctls.GetMceCapSupported(kvm) : null;
        int xsave2 = KvmIoctls.CheckExtension(kvm, KVM_CAP_XSAVE2);
        XsaveSize = xsave2 > KvmXsaveSize ? xsave2 : KvmXsaveSize;
        HasXsave2 = xsave2 > 0;
        int slots = KvmIoctls.CheckExtension(kvm, KVM_CAP_NR_MEMSLOTS);
        MemorySlots = slots > 0 ? slots : 32; // the documented minimum when the capability is absent
        int max = KvmIoctls.CheckExtension(kvm, KVM_CAP_MAX_VCPUS);
        int recommended = KvmIoctls.CheckExtension(kvm, KVM_CAP_NR_VCPUS);
        MaxVcpus = max > 0 ? max : recommended > 0 ? recommended : 4;
    }

    internal int VcpuMmapSize { get; }

    /// <summary>The IA32_MCG_CAP flag bits KVM can give a vCPU (KVM_CAP_MCE; up to 32 banks), or null without machine-check emulation.</summary>
    internal ulong? McgCapSupported { get; }

    /// <summary>KVM_CAP_SET_GUEST_DEBUG: single-step, INT3 interception and host hardware breakpoints.</summary>
    internal bool HasGuestDebug { get; }

    internal CpuidEntry[] SupportedCpuid { get; }

    internal uint[] SupportedMsrs { get; }

    internal HashSet<uint> MsrSet { get; }

    internal bool HasReadOnlyMemory { get; }

    internal bool HasIrqchip { get; }

    /// <summary>KVM_CAP_SYNC_REGS covers the general registers: they can travel in <c>kvm_run</c> instead of by ioctl.</summary>
    internal bool HasSyncGeneralRegisters { get; }

    internal bool HasPit2 { get; }

    internal bool HasSetTssAddr { get; }

    internal bool HasSetIdentityMapAddr { get; }

    /// <summary>KVM_GET_XSAVE/KVM_SET_XSAVE: the whole XSAVE-covered state in one call.</summary>
    internal bool HasXsave { get; }

    /// <summary>KVM_GET_XSAVE2 exists (the XSAVE image may be larger than 4096 bytes; see <see cref="XsaveSize"/>).</summary>
    internal bool HasXsave2 { get; }

    /// <summary>Bytes of a kvm_xsave buffer: 4096, or more where dynamic features (AMX) make the image larger.</summary>
    internal int XsaveSize { get; }

    /// <summary>KVM_GET_XCRS/KVM_SET_XCRS: XCR0.</summary>
    internal bool HasXcrs { get; }

    /// <summary>KVM_GET_DEBUGREGS/KVM_SET_DEBUGREGS.</summary>
    internal bool HasDebugRegisters { get; }

    /// <summary>KVM_GET/SET_VCPU_EVENTS: exceptions, interrupts and NMIs in flight.</summary>
    internal bool HasVcpuEvents { get; }

    /// <summary>KVM_GET/SET_MP_STATE: whether a vCPU is halted.</summary>
    internal bool HasMpState { get; }

    internal int MemorySlots { get; }

    internal int MaxVcpus { get; }

    /// <summary>The host information, read through <paramref name="kvm"/> on first use.</summary>
    internal static KvmHostInfo Get(KvmSystemHandle kvm)
    {
        lock (s_lock)
        {
            return s_instance ??= new KvmHostInfo(kvm);
        }
    }
}
