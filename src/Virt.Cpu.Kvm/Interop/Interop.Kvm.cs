namespace Virt.Cpu.Kvm;

internal static partial class Interop
{
    /// <summary>KVM ABI constants from <c>linux/kvm.h</c> and <c>asm/kvm.h</c> (x86-64).</summary>
    internal static partial class Kvm
    {
        /// <summary>The only stable KVM API version.</summary>
        internal const int ApiVersion = 12;

        /// <summary>The ioctl type byte of every KVM ioctl (<c>KVMIO</c>).</summary>
        internal const uint KVMIO = 0xAE;

        // _IOC direction bits (asm-generic/ioctl.h).
        private const uint IocNone = 0;
        private const uint IocWrite = 1;
        private const uint IocRead = 2;

        internal static nuint IO(uint nr) => Ioc(IocNone, nr, 0);

        internal static nuint IOR(uint nr, int size) => Ioc(IocRead, nr, size);

        internal static nuint IOW(uint nr, int size) => Ioc(IocWrite, nr, size);

        internal static nuint IOWR(uint nr, int size) => Ioc(IocRead | IocWrite, nr, size);

        // asm-generic/ioctl.h: dir in bits 30-31, size in 16-29, type in 8-15, number in 0-7.
        private static nuint Ioc(uint dir, uint nr, int size) => (nuint)((dir << 30) | ((uint)size << 16) | (KVMIO << 8) | nr);

        // System ioctls (on /dev/kvm).
        internal static readonly nuint KVM_GET_API_VERSION = IO(0x00);
        internal static readonly nuint KVM_CREATE_VM = IO(0x01);
        internal static readonly nuint KVM_GET_MSR_INDEX_LIST = IOWR(0x02, sizeof(uint));
        internal static readonly nuint KVM_CHECK_EXTENSION = IO(0x03);
        internal static readonly nuint KVM_GET_VCPU_MMAP_SIZE = IO(0x04);
        internal static readonly nuint KVM_GET_SUPPORTED_CPUID = IOWR(0x05, 8);

        // VM ioctls.
        internal static readonly nuint KVM_CREATE_VCPU = IO(0x41);
        internal static readonly nuint KVM_GET_DIRTY_LOG = IOW(0x42, KvmDirtyLog.Size);
        internal static readonly nuint KVM_SET_USER_MEMORY_REGION = IOW(0x46, KvmUserspaceMemoryRegion.Size);
        internal static readonly nuint KVM_SET_TSS_ADDR = IO(0x47);
        internal static readonly nuint KVM_SET_IDENTITY_MAP_ADDR = IOW(0x48, sizeof(ulong));
        internal static readonly nuint KVM_CREATE_IRQCHIP = IO(0x60);
        internal static readonly nuint KVM_IRQ_LINE = IOW(0x61, KvmIrqLevel.Size);
        internal static readonly nuint KVM_CREATE_PIT2 = IOW(0x77, KvmPitConfig.Size);
        internal static readonly nuint KVM_GET_IRQCHIP = IOWR(0x62, KvmIrqchipSize);
        internal static readonly nuint KVM_SET_IRQCHIP = IOR(0x63, KvmIrqchipSize);
        internal static readonly nuint KVM_SET_CLOCK = IOW(0x7b, KvmClockDataSize);
        internal static readonly nuint KVM_GET_CLOCK = IOR(0x7c, KvmClockDataSize);
        internal static readonly nuint KVM_GET_PIT2 = IOR(0x9f, KvmPitState2Size);
        internal static readonly nuint KVM_SET_PIT2 = IOW(0xa0, KvmPitState2Size);

        /// <summary><c>sizeof(struct kvm_irqchip)</c>: chip_id, pad, a 512-byte union.</summary>
        internal const int KvmIrqchipSize = 520;

        /// <summary><c>sizeof(struct kvm_pit_state2)</c>: three 24-byte channels, flags, reserved[9].</summary>
        internal const int KvmPitState2Size = 112;

        /// <summary><c>sizeof(struct kvm_clock_data)</c>.</summary>
        internal const int KvmClockDataSize = 48;

        /// <summary>kvm_irqchip.chip_id: the master PIC, the slave PIC, the IOAPIC.</summary>
        internal const uint KVM_IRQCHIP_PIC_MASTER = 0, KVM_IRQCHIP_PIC_SLAVE = 1, KVM_IRQCHIP_IOAPIC = 2;

        // vCPU ioctls.
        internal static readonly nuint KVM_RUN = IO(0x80);
        internal static readonly nuint KVM_GET_REGS = IOR(0x81, KvmRegsSize);
        internal static readonly nuint KVM_SET_REGS = IOW(0x82, KvmRegsSize);
        internal static readonly nuint KVM_GET_SREGS = IOR(0x83, KvmSregs.Size);
        internal static readonly nuint KVM_SET_SREGS = IOW(0x84, KvmSregs.Size);
        internal static readonly nuint KVM_TRANSLATE = IOWR(0x85, 24);
        internal static readonly nuint KVM_INTERRUPT = IOW(0x86, sizeof(uint));
        internal static readonly nuint KVM_GET_MSRS = IOWR(0x88, 8);
        internal static readonly nuint KVM_SET_MSRS = IOW(0x89, 8);
        internal static readonly nuint KVM_SET_SIGNAL_MASK = IOW(0x8b, sizeof(uint));
        internal static readonly nuint KVM_GET_FPU = IOR(0x8c, KvmFpu.Size);
        internal static readonly nuint KVM_SET_FPU = IOW(0x8d, KvmFpu.Size);
        internal static readonly nuint KVM_SET_CPUID2 = IOW(0x90, 8);
        internal static readonly nuint KVM_GET_CPUID2 = IOWR(0x91, 8);
        internal static readonly nuint KVM_GET_LAPIC = IOR(0x8e, KvmLapicSize);
        internal static readonly nuint KVM_SET_LAPIC = IOW(0x8f, KvmLapicSize);
        internal static readonly nuint KVM_GET_MP_STATE = IOR(0x98, sizeof(uint));
        internal static readonly nuint KVM_SET_MP_STATE = IOW(0x99, sizeof(uint));
        internal static readonly nuint KVM_GET_VCPU_EVENTS = IOR(0x9f, KvmVcpuEventsSize);
        internal static readonly nuint KVM_SET_VCPU_EVENTS = IOW(0xa0, KvmVcpuEventsSize);
        internal static readonly nuint KVM_SET_GUEST_DEBUG = IOW(0x9b, KvmGuestDebugSize);
        internal static readonly nuint KVM_GET_DEBUGREGS = IOR(0xa1, KvmDebugRegsSize);
        internal static readonly nuint KVM_SET_DEBUGREGS = IOW(0xa2, KvmDebugRegsSize);
        internal static readonly nuint KVM_GET_XSAVE = IOR(0xa4, KvmXsaveSize);
        internal static readonly nuint KVM_SET_XSAVE = IOW(0xa5, KvmXsaveSize);
        internal static readonly nuint KVM_GET_XCRS = IOR(0xa6, KvmXcrsSize);
        internal static readonly nuint KVM_SET_XCRS = IOW(0xa7, KvmXcrsSize);
        internal static readonly nuint KVM_GET_XSAVE2 = IOR(0xcf, KvmXsaveSize);
        internal static readonly nuint KVM_X86_SETUP_MCE = IOW(0x9c, sizeof(ulong));
        internal static readonly nuint KVM_X86_GET_MCE_CAP_SUPPORTED = IOR(0x9d, sizeof(ulong));

        /// <summary><c>sizeof(struct kvm_lapic_state)</c>: the APIC register page's first KiB.</summary>
        internal const int KvmLapicSize = 1024;

        /// <summary><c>sizeof(struct kvm_vcpu_events)</c>.</summary>
        internal const int KvmVcpuEventsSize = 64;

        /// <summary>kvm_vcpu_events.flags: the shadow field is valid (and written back).</summary>
        internal const uint KVM_VCPUEVENT_VALID_SHADOW = 0x4;

        /// <summary>kvm_vcpu_events.flags: nmi.pending is valid.</summary>
        internal const uint KVM_VCPUEVENT_VALID_NMI_PENDING = 0x1;

        /// <summary>kvm_mp_state: runnable.</summary>
        internal const uint KVM_MP_STATE_RUNNABLE = 0;

        /// <summary>kvm_mp_state: an application processor waiting for INIT and a start-up IPI.</summary>
        internal const uint KVM_MP_STATE_UNINITIALIZED = 1;

        /// <summary>kvm_mp_state: an application processor that took an INIT and waits for a start-up IPI.</summary>
        internal const uint KVM_MP_STATE_INIT_RECEIVED = 2;

        /// <summary>kvm_mp_state: halted in HLT.</summary>
        internal const uint KVM_MP_STATE_HALTED = 3;

        /// <summary>kvm_mp_state: a start-up IPI arrived and is not yet taken (KVM takes it before it reports the state).</summary>
        internal const uint KVM_MP_STATE_SIPI_RECEIVED = 4;

        /// <summary><c>sizeof(struct kvm_debugregs)</c>: db[4], dr6, dr7, flags, reserved[9].</summary>
        internal const int KvmDebugRegsSize = 128;

        /// <summary><c>sizeof(struct kvm_xsave)</c> without its flexible tail: region[1024] of u32.</summary>
        internal const int KvmXsaveSize = 4096;

        /// <summary><c>sizeof(struct kvm_xcrs)</c>: nr_xcrs, flags, xcrs[16] of 16 bytes, padding[16] of u64.</summary>
        internal const int KvmXcrsSize = 8 + (16 * 16) + (16 * 8);

        /// <summary>Most XCRs in a kvm_xcrs (KVM_MAX_XCRS).</summary>
        internal const int KvmMaxXcrs = 16;

        /// <summary><c>sizeof(struct kvm_regs)</c>: 18 registers of 8 bytes, the layout of <see cref="GeneralRegisters"/>.</summary>
        internal const int KvmRegsSize = 144;

        // Capabilities (KVM_CHECK_EXTENSION arguments).
        internal const int KVM_CAP_IRQCHIP = 0;
        internal const int KVM_CAP_USER_MEMORY = 3;
        internal const int KVM_CAP_SET_TSS_ADDR = 4;
        internal const int KVM_CAP_EXT_CPUID = 7;
        internal const int KVM_CAP_NR_VCPUS = 9;
        internal const int KVM_CAP_NR_MEMSLOTS = 10;
        internal const int KVM_CAP_PIT2 = 33;
        internal const int KVM_CAP_SYNC_REGS = 74;
        internal const ulong KVM_SYNC_X86_REGS = 1;
        internal const int KVM_CAP_SET_IDENTITY_MAP_ADDR = 37;
        internal const int KVM_CAP_MAX_VCPUS = 66;
        internal const int KVM_CAP_READONLY_MEM = 81;
        internal const int KVM_CAP_IMMEDIATE_EXIT = 136;
        internal const int KVM_CAP_DEBUGREGS = 50;
        internal const int KVM_CAP_SET_GUEST_DEBUG = 23;

        // kvm_guest_debug.control (linux/kvm.h, asm/kvm.h).
        internal const uint KVM_GUESTDBG_ENABLE = 0x1;
        internal const uint KVM_GUESTDBG_SINGLESTEP = 0x2;
        internal const uint KVM_GUESTDBG_USE_SW_BP = 0x10000;
        internal const uint KVM_GUESTDBG_USE_HW_BP = 0x20000;

        /// <summary><c>sizeof(struct kvm_guest_debug)</c>: control, pad, debugreg[8].</summary>
        internal const int KvmGuestDebugSize = 72;
        internal const int KVM_CAP_MP_STATE = 14;
        internal const int KVM_CAP_VCPU_EVENTS = 41;
        internal const int KVM_CAP_XSAVE = 55;
        internal const int KVM_CAP_XCRS = 56;
        internal const int KVM_CAP_XSAVE2 = 208;
        internal const int KVM_CAP_MCE = 31;

        // Exit reasons (kvm_run.exit_reason).
        internal const uint KVM_EXIT_UNKNOWN = 0;
        internal const uint KVM_EXIT_EXCEPTION = 1;
        internal const uint KVM_EXIT_IO = 2;
        internal const uint KVM_EXIT_HYPERCALL = 3;
        internal const uint KVM_EXIT_DEBUG = 4;
        internal const uint KVM_EXIT_HLT = 5;
        internal const uint KVM_EXIT_MMIO = 6;
        internal const uint KVM_EXIT_IRQ_WINDOW_OPEN = 7;
        internal const uint KVM_EXIT_SHUTDOWN = 8;
        internal const uint KVM_EXIT_FAIL_ENTRY = 9;
        internal const uint KVM_EXIT_INTR = 10;
        internal const uint KVM_EXIT_INTERNAL_ERROR = 17;
        internal const uint KVM_EXIT_SYSTEM_EVENT = 24;

        /// <summary>kvm_run.io.direction for <c>OUT</c>.</summary>
        internal const byte KVM_EXIT_IO_OUT = 1;

        // kvm_run.system_event.type.
        internal const uint KVM_SYSTEM_EVENT_SHUTDOWN = 1;
        internal const uint KVM_SYSTEM_EVENT_RESET = 2;
        internal const uint KVM_SYSTEM_EVENT_CRASH = 3;

        // kvm_run.internal.suberror.
        internal const uint KVM_INTERNAL_ERROR_EMULATION = 1;
        internal const uint KVM_INTERNAL_ERROR_SIMUL_EX = 2;
        internal const uint KVM_INTERNAL_ERROR_DELIVERY_EV = 3;
        internal const uint KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON = 4;

        // Memory slot flags.
        internal const uint KVM_MEM_LOG_DIRTY_PAGES = 1;
        internal const uint KVM_MEM_READONLY = 2;

        /// <summary>kvm_cpuid_entry2.flags: the sub-leaf index is significant.</summary>
        internal const uint KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1;

        /// <summary>Interrupt vectors KVM_INTERRUPT accepts (0-255).</summary>
        internal const int KVM_NR_INTERRUPTS = 256;
    }
}
