using System.Runtime.InteropServices;
using static Virt.Cpu.Kvm.Interop.Kvm;

namespace Virt.Cpu.Kvm;

/// <summary>
/// One small method per KVM ioctl. Each checks the result and throws <see cref="HypervisorException"/>
/// with the ioctl name and errno, except the <c>Try</c> forms on the vCPU hot path, which return errno.
/// </summary>
internal static unsafe class KvmIoctls
{
    /// <summary>The KVM device node.</summary>
    internal const string DevicePath = "/dev/kvm";

    /// <summary>Largest CPUID table requested from KVM; real hosts report well under 100 leaves.</summary>
    private const int MaxCpuidEntries = 4096;

    /// <summary>Largest MSR list accepted from KVM.</summary>
    private const int MaxMsrIndexes = 65536;

    internal static HypervisorException Error(string operation, int errno) =>
        new(operation, errno, Marshal.GetPInvokeErrorMessage(errno));

    private static int Check(int result, string operation) =>
        result < 0 ? throw Error(operation, Marshal.GetLastPInvokeError()) : result;

    private static int Ioctl(SafeHandle fd, nuint request, nint argument, string operation) =>
        Check(Interop.Libc.Ioctl(fd, request, argument), operation);

    // ---- /dev/kvm ----

    /// <summary>Opens <c>/dev/kvm</c>; returns errno instead of throwing so that availability checks can explain it.</summary>
    internal static KvmSystemHandle? TryOpenSystem(out int errno)
    {
        int fd = Interop.Libc.Open(DevicePath, Interop.Libc.O_RDWR | Interop.Libc.O_CLOEXEC);
        if (fd < 0)
        {
            errno = Marshal.GetLastPInvokeError();
            return null;
        }

        errno = 0;
        var handle = new KvmSystemHandle();
        handle.Adopt(fd);
        return handle;
    }

    /// <summary>Opens <c>/dev/kvm</c>; a failure says why and what to do, as the availability check does.</summary>
    internal static KvmSystemHandle OpenSystem() =>
        TryOpenSystem(out int errno) ?? throw new HypervisorException("open " + DevicePath, errno, DescribeOpenFailure(errno));

    /// <summary>Why <c>/dev/kvm</c> could not be opened with <paramref name="errno"/>, and what to do about it.</summary>
    internal static string DescribeOpenFailure(int errno) => errno switch
    {
        Interop.Libc.ENOENT => $"{DevicePath} does not exist: the KVM kernel module is not loaded, or the processor (or the VM this host runs in) offers no virtualization. Load kvm_intel or kvm_amd, or enable nested virtualization.",
        Interop.Libc.ENXIO or Interop.Libc.ENODEV => $"{DevicePath} exists but no KVM driver is behind it: load kvm_intel or kvm_amd and check that virtualization is enabled in the firmware.",
        Interop.Libc.EACCES or Interop.Libc.EPERM => $"Permission denied opening {DevicePath}: add the user to the 'kvm' group (e.g. `sudo usermod -aG kvm $USER`), then log in again.",
        _ => $"{DevicePath} cannot be opened: {Marshal.GetPInvokeErrorMessage(errno)} (errno {errno}).",
    };

    internal static int GetApiVersion(KvmSystemHandle kvm) => Ioctl(kvm, KVM_GET_API_VERSION, 0, nameof(KVM_GET_API_VERSION));

    /// <summary>KVM_CHECK_EXTENSION on the system or a VM descriptor: 0 when absent, else a capability-specific positive value.</summary>
    internal static int CheckExtension(KvmFileDescriptorHandle fd, int capability) =>
        Ioctl(fd, KVM_CHECK_EXTENSION, capability, nameof(KVM_CHECK_EXTENSION));

    internal static int GetVcpuMmapSize(KvmSystemHandle kvm) => Ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0, nameof(KVM_GET_VCPU_MMAP_SIZE));

    internal static KvmVmHandle CreateVm(KvmSystemHandle kvm)
    {
        // Machine type 0: the default x86 VM.
        int fd = Ioctl(kvm, KVM_CREATE_VM, 0, nameof(KVM_CREATE_VM));
        var handle = new KvmVmHandle();
        handle.Adopt(fd);
        return handle;
    }

    internal static CpuidEntry[] GetSupportedCpuid(KvmSystemHandle kvm)
    {
        for (int capacity = 128; ; capacity *= 2)
        {
            byte[] buffer = new byte[8 + (capacity * KvmCpuidEntry2.Size)];
            fixed (byte* p = buffer)
            {
                // SAFETY: p points to a pinned kvm_cpuid2 header followed by `capacity` entries; KVM writes at most nent entries.
                *(uint*)p = (uint)capacity;
                int r = Interop.Libc.Ioctl(kvm, KVM_GET_SUPPORTED_CPUID, (nint)p);
                if (r < 0)
                {
                    int errno = Marshal.GetLastPInvokeError();
                    if (errno == Interop.Libc.E2BIG && capacity < MaxCpuidEntries)
                    {
                        continue;
                    }

                    throw Error(nameof(KVM_GET_SUPPORTED_CPUID), errno);
                }

                int count = (int)Math.Min(*(uint*)p, (uint)capacity);
                var entries = new CpuidEntry[count];
                var e = (KvmCpuidEntry2*)(p + 8);
                for (int i = 0; i < count; i++)
                {
                    entries[i] = new CpuidEntry(e[i].Function, e[i].Index, e[i].Flags, e[i].Eax, e[i].Ebx, e[i].Ecx, e[i].Edx);
                }

                return entries;
            }
        }
    }

    internal static uint[] GetMsrIndexList(KvmSystemHandle kvm)
    {
        uint probe = 0;
        // SAFETY: with nmsrs = 0 KVM only writes the required count back into the 4-byte header.
        int r = Interop.Libc.Ioctl(kvm, KVM_GET_MSR_INDEX_LIST, (nint)(&probe));
        if (r < 0 && Marshal.GetLastPInvokeError() is int errno && errno != Interop.Libc.E2BIG)
        {
            throw Error(nameof(KVM_GET_MSR_INDEX_LIST), errno);
        }

        if (r >= 0 || probe == 0)
        {
            return [];
        }

        uint capacity = Math.Min(probe, MaxMsrIndexes);
        var buffer = new uint[capacity + 1];
        fixed (uint* p = buffer)
        {
            // SAFETY: the pinned buffer holds the header and `capacity` indexes, the count KVM asked for.
            p[0] = capacity;
            Ioctl(kvm, KVM_GET_MSR_INDEX_LIST, (nint)p, nameof(KVM_GET_MSR_INDEX_LIST));
            return buffer.AsSpan(1, (int)Math.Min(p[0], capacity)).ToArray();
        }
    }

    // ---- VM ----

    internal static KvmVcpuHandle CreateVcpu(KvmVmHandle vm, int id)
    {
        int fd = Ioctl(vm, KVM_CREATE_VCPU, id, nameof(KVM_CREATE_VCPU));
        var handle = new KvmVcpuHandle();
        handle.Adopt(fd);
        return handle;
    }

    internal static void SetUserMemoryRegion(KvmVmHandle vm, in KvmUserspaceMemoryRegion region)
    {
        fixed (KvmUserspaceMemoryRegion* p = &region)
        {
            // SAFETY: p points to a complete kvm_userspace_memory_region that KVM only reads.
            Ioctl(vm, KVM_SET_USER_MEMORY_REGION, (nint)p, nameof(KVM_SET_USER_MEMORY_REGION));
        }
    }

    /// <summary>Copies slot <paramref name="slot"/>'s dirty bitmap (one bit per page) into <paramref name="bitmap"/> and clears KVM's copy.</summary>
    /// <remarks>The caller guarantees <paramref name="bitmap"/> has room for one bit per page of the slot, rounded up to 64 bits.</remarks>
    internal static void GetDirtyLog(KvmVmHandle vm, uint slot, Span<ulong> bitmap)
    {
        fixed (ulong* b = bitmap)
        {
            var log = new KvmDirtyLog { Slot = slot, DirtyBitmap = (ulong)b };
            // SAFETY: the bitmap is pinned and, per the caller's duty, large enough for the slot.
            Ioctl(vm, KVM_GET_DIRTY_LOG, (nint)(&log), nameof(KVM_GET_DIRTY_LOG));
        }
    }

    internal static void SetTssAddr(KvmVmHandle vm, ulong address) =>
        Ioctl(vm, KVM_SET_TSS_ADDR, (nint)address, nameof(KVM_SET_TSS_ADDR));

    internal static void SetIdentityMapAddr(KvmVmHandle vm, ulong address)
    {
        // SAFETY: the argument is a pointer to a u64 on this stack frame that KVM only reads.
        Ioctl(vm, KVM_SET_IDENTITY_MAP_ADDR, (nint)(&address), nameof(KVM_SET_IDENTITY_MAP_ADDR));
    }

    internal static void CreateIrqchip(KvmVmHandle vm) => Ioctl(vm, KVM_CREATE_IRQCHIP, 0, nameof(KVM_CREATE_IRQCHIP));

    internal static void CreatePit2(KvmVmHandle vm)
    {
        var config = default(KvmPitConfig);
        // SAFETY: a zeroed kvm_pit_config on this stack frame, only read by KVM.
        Ioctl(vm, KVM_CREATE_PIT2, (nint)(&config), nameof(KVM_CREATE_PIT2));
    }

    internal static void IrqLine(KvmVmHandle vm, uint irq, bool level)
    {
        var line = new KvmIrqLevel { Irq = irq, Level = level ? 1u : 0u };
        // SAFETY: a kvm_irq_level on this stack frame, only read by KVM.
        Ioctl(vm, KVM_IRQ_LINE, (nint)(&line), nameof(KVM_IRQ_LINE));
    }

    /// <summary>
    /// A VM ioctl that fills or reads the fixed-size structure in <paramref name="buffer"/>:
    /// the irqchip, PIT and clock state calls.
    /// </summary>
    internal static void VmStateIoctl(KvmVmHandle vm, nuint request, Span<byte> buffer, string operation)
    {
        fixed (byte* p = buffer)
        {
            // SAFETY: the caller sizes the buffer to the structure the request names; KVM reads or writes no more.
            Ioctl(vm, request, (nint)p, operation);
        }
    }

    // ---- vCPU ----

    /// <summary>Maps the vCPU's <c>kvm_run</c> area (shared with the kernel).</summary>
    internal static nint MapRun(KvmVcpuHandle vcpu, int size)
    {
        nint p = Interop.Libc.Mmap(0, (nuint)size, Interop.Libc.PROT_READ | Interop.Libc.PROT_WRITE, Interop.Libc.MAP_SHARED, vcpu, 0);
        return p == Interop.Libc.MAP_FAILED ? throw Error("mmap kvm_run", Marshal.GetLastPInvokeError()) : p;
    }

    /// <summary>KVM_RUN; returns 0 or errno (EINTR when interrupted), never throws: the hot path decides.</summary>
    internal static int TryRun(KvmVcpuHandle vcpu) =>
        Interop.Libc.Ioctl(vcpu, KVM_RUN, 0) < 0 ? Marshal.GetLastPInvokeError() : 0;

    internal static GeneralRegisters GetRegs(KvmVcpuHandle vcpu)
    {
        GeneralRegisters regs;
        // SAFETY: GeneralRegisters has the exact layout and size of struct kvm_regs (checked by tests).
        Ioctl(vcpu, KVM_GET_REGS, (nint)(&regs), nameof(KVM_GET_REGS));
        return regs;
    }

    internal static void SetRegs(KvmVcpuHandle vcpu, in GeneralRegisters regs)
    {
        fixed (GeneralRegisters* p = &regs)
        {
            // SAFETY: as GetRegs; KVM only reads.
            Ioctl(vcpu, KVM_SET_REGS, (nint)p, nameof(KVM_SET_REGS));
        }
    }

    internal static KvmSregs GetSregs(KvmVcpuHandle vcpu)
    {
        KvmSregs sregs;
        // SAFETY: KvmSregs mirrors struct kvm_sregs (size checked by tests).
        Ioctl(vcpu, KVM_GET_SREGS, (nint)(&sregs), nameof(KVM_GET_SREGS));
        return sregs;
    }

    internal static void SetSregs(KvmVcpuHandle vcpu, in KvmSregs sregs)
    {
        fixed (KvmSregs* p = &sregs)
        {
            // SAFETY: as GetSregs; KVM only reads.
            Ioctl(vcpu, KVM_SET_SREGS, (nint)p, nameof(KVM_SET_SREGS));
        }
    }

    internal static KvmFpu GetFpu(KvmVcpuHandle vcpu)
    {
        KvmFpu fpu;
        // SAFETY: KvmFpu mirrors struct kvm_fpu (size checked by tests).
        Ioctl(vcpu, KVM_GET_FPU, (nint)(&fpu), nameof(KVM_GET_FPU));
        return fpu;
    }

    internal static void SetFpu(KvmVcpuHandle vcpu, in KvmFpu fpu)
    {
        fixed (KvmFpu* p = &fpu)
        {
            // SAFETY: as GetFpu; KVM only reads.
            Ioctl(vcpu, KVM_SET_FPU, (nint)p, nameof(KVM_SET_FPU));
        }
    }

    /// <summary>KVM_GET_XSAVE (or KVM_GET_XSAVE2 when <paramref name="useXsave2"/>) into <paramref name="buffer"/>, which holds at least 4096 bytes.</summary>
    internal static void GetXsave(KvmVcpuHandle vcpu, Span<byte> buffer, bool useXsave2)
    {
        fixed (byte* p = buffer)
        {
            // SAFETY: the pinned buffer is at least as large as the size KVM writes (4096, or KVM_CAP_XSAVE2's size for XSAVE2; the caller sizes it so).
            if (useXsave2)
            {
                Ioctl(vcpu, KVM_GET_XSAVE2, (nint)p, nameof(KVM_GET_XSAVE2));
            }
            else
            {
                Ioctl(vcpu, KVM_GET_XSAVE, (nint)p, nameof(KVM_GET_XSAVE));
            }
        }
    }

    /// <summary>KVM_SET_XSAVE from <paramref name="buffer"/>, which holds at least the size KVM reads (4096 or KVM_CAP_XSAVE2's size).</summary>
    internal static void SetXsave(KvmVcpuHandle vcpu, ReadOnlySpan<byte> buffer)
    {
        fixed (byte* p = buffer)
        {
            // SAFETY: the pinned buffer is as large as the image KVM reads; KVM only reads.
            Ioctl(vcpu, KVM_SET_XSAVE, (nint)p, nameof(KVM_SET_XSAVE));
        }
    }

    /// <summary>KVM_GET_XCRS: the value of XCR0 (the only XCR KVM reports on x86).</summary>
    internal static ulong GetXcr0(KvmVcpuHandle vcpu)
    {
        byte* buffer = stackalloc byte[KvmXcrsSize];
        new Span<byte>(buffer, KvmXcrsSize).Clear();
        // SAFETY: a zeroed kvm_xcrs on this stack frame; KVM writes nr_xcrs entries, at most KVM_MAX_XCRS.
        Ioctl(vcpu, KVM_GET_XCRS, (nint)buffer, nameof(KVM_GET_XCRS));
        uint count = Math.Min(*(uint*)buffer, KvmMaxXcrs);
        for (int i = 0; i < count; i++)
        {
            byte* e = buffer + 8 + (i * 16);
            if (*(uint*)e == 0)
            {
                return *(ulong*)(e + 8);
            }
        }

        return 1;
    }

    /// <summary>KVM_SET_XCRS with XCR0 = <paramref name="xcr0"/>.</summary>
    internal static void SetXcr0(KvmVcpuHandle vcpu, ulong xcr0)
    {
        byte* buffer = stackalloc byte[KvmXcrsSize];
        new Span<byte>(buffer, KvmXcrsSize).Clear();
        // SAFETY: a kvm_xcrs on this stack frame with one entry (XCR0); KVM only reads.
        *(uint*)buffer = 1;
        *(ulong*)(buffer + 16) = xcr0;
        Ioctl(vcpu, KVM_SET_XCRS, (nint)buffer, nameof(KVM_SET_XCRS));
    }

    /// <summary>KVM_GET_LAPIC into <paramref name="page"/> (1 KiB).</summary>
    internal static void GetLapic(KvmVcpuHandle vcpu, Span<byte> page)
    {
        fixed (byte* p = page)
        {
            // SAFETY: the caller passes at least KvmLapicSize bytes, which KVM fills.
            Ioctl(vcpu, KVM_GET_LAPIC, (nint)p, nameof(KVM_GET_LAPIC));
        }
    }

    /// <summary>KVM_SET_LAPIC from <paramref name="page"/> (1 KiB).</summary>
    internal static void SetLapic(KvmVcpuHandle vcpu, ReadOnlySpan<byte> page)
    {
        fixed (byte* p = page)
        {
            // SAFETY: the caller passes at least KvmLapicSize bytes; KVM only reads.
            Ioctl(vcpu, KVM_SET_LAPIC, (nint)p, nameof(KVM_SET_LAPIC));
        }
    }

    /// <summary>KVM_GET_MP_STATE.</summary>
    internal static uint GetMpState(KvmVcpuHandle vcpu)
    {
        uint state;
        // SAFETY: a u32 on this stack frame that KVM fills.
        Ioctl(vcpu, KVM_GET_MP_STATE, (nint)(&state), nameof(KVM_GET_MP_STATE));
        return state;
    }

    /// <summary>KVM_SET_MP_STATE.</summary>
    internal static void SetMpState(KvmVcpuHandle vcpu, uint state)
    {
        // SAFETY: a u32 on this stack frame that KVM only reads.
        Ioctl(vcpu, KVM_SET_MP_STATE, (nint)(&state), nameof(KVM_SET_MP_STATE));
    }

    /// <summary>KVM_GET_VCPU_EVENTS into <paramref name="events"/> (64 bytes).</summary>
    internal static void GetVcpuEvents(KvmVcpuHandle vcpu, Span<byte> events)
    {
        fixed (byte* p = events)
        {
            // SAFETY: the caller passes KvmVcpuEventsSize bytes, which KVM fills.
            Ioctl(vcpu, KVM_GET_VCPU_EVENTS, (nint)p, nameof(KVM_GET_VCPU_EVENTS));
        }
    }

    /// <summary>KVM_SET_VCPU_EVENTS from <paramref name="events"/> (64 bytes).</summary>
    internal static void SetVcpuEvents(KvmVcpuHandle vcpu, ReadOnlySpan<byte> events)
    {
        fixed (byte* p = events)
        {
            // SAFETY: the caller passes KvmVcpuEventsSize bytes; KVM only reads.
            Ioctl(vcpu, KVM_SET_VCPU_EVENTS, (nint)p, nameof(KVM_SET_VCPU_EVENTS));
        }
    }

    /// <summary>KVM_GET_DEBUGREGS.</summary>
    internal static DebugRegisters GetDebugRegs(KvmVcpuHandle vcpu)
    {
        ulong* k = stackalloc ulong[KvmDebugRegsSize / 8];
        // SAFETY: a kvm_debugregs-sized buffer on this stack frame that KVM fills.
        Ioctl(vcpu, KVM_GET_DEBUGREGS, (nint)k, nameof(KVM_GET_DEBUGREGS));
        return new DebugRegisters { Dr0 = k[0], Dr1 = k[1], Dr2 = k[2], Dr3 = k[3], Dr6 = k[4], Dr7 = k[5] };
    }

    /// <summary>KVM_SET_GUEST_DEBUG with <paramref name="control"/> (KVM_GUESTDBG_*) and the host breakpoints in DR0-DR3 and DR7.</summary>
    internal static void SetGuestDebug(KvmVcpuHandle vcpu, uint control, in DebugRegisters breakpoints)
    {
        ulong* k = stackalloc ulong[KvmGuestDebugSize / 8];
        new Span<ulong>(k, KvmGuestDebugSize / 8).Clear();
        k[0] = control;
        k[1] = breakpoints.Dr0;
        k[2] = breakpoints.Dr1;
        k[3] = breakpoints.Dr2;
        k[4] = breakpoints.Dr3;
        k[8] = breakpoints.Dr7;
        // SAFETY: a complete kvm_guest_debug (control and pad in the first word, debugreg[8] after it) on this stack frame; KVM only reads.
        Ioctl(vcpu, KVM_SET_GUEST_DEBUG, (nint)k, nameof(KVM_SET_GUEST_DEBUG));
    }

    /// <summary>KVM_SET_DEBUGREGS.</summary>
    internal static void SetDebugRegs(KvmVcpuHandle vcpu, in DebugRegisters d)
    {
        ulong* k = stackalloc ulong[KvmDebugRegsSize / 8];
        new Span<ulong>(k, KvmDebugRegsSize / 8).Clear();
        k[0] = d.Dr0;
        k[1] = d.Dr1;
        k[2] = d.Dr2;
        k[3] = d.Dr3;
        k[4] = d.Dr6;
        k[5] = d.Dr7;
        // SAFETY: a complete kvm_debugregs (flags and reserved zero) on this stack frame; KVM only reads.
        Ioctl(vcpu, KVM_SET_DEBUGREGS, (nint)k, nameof(KVM_SET_DEBUGREGS));
    }

    /// <summary>KVM_GET_MSRS or KVM_SET_MSRS over <paramref name="entries"/>; returns how many KVM processed (it stops at the first failure).</summary>
    internal static int TransferMsrs(KvmVcpuHandle vcpu, Span<KvmMsrEntry> entries, bool set)
    {
        int length = 8 + (entries.Length * KvmMsrEntry.Size);
        byte[]? heap = length > 1024 ? new byte[length] : null;
        Span<byte> storage = heap ?? stackalloc byte[length];
        fixed (byte* buffer = storage)
        {
            return TransferMsrs(vcpu, buffer, entries, set);
        }
    }

    private static int TransferMsrs(KvmVcpuHandle vcpu, byte* buffer, Span<KvmMsrEntry> entries, bool set)
    {
        // SAFETY: buffer holds a kvm_msrs header and entries.Length entries; KVM touches no more than nmsrs.
        *(uint*)buffer = (uint)entries.Length;
        *(uint*)(buffer + 4) = 0;
        var e = new Span<KvmMsrEntry>(buffer + 8, entries.Length);
        entries.CopyTo(e);
        int n = set
            ? Ioctl(vcpu, KVM_SET_MSRS, (nint)buffer, nameof(KVM_SET_MSRS))
            : Ioctl(vcpu, KVM_GET_MSRS, (nint)buffer, nameof(KVM_GET_MSRS));
        e.CopyTo(entries);
        return n;
    }

    internal static void SetCpuid2(KvmVcpuHandle vcpu, IReadOnlyList<CpuidEntry> entries)
    {
        byte[] buffer = new byte[8 + (entries.Count * KvmCpuidEntry2.Size)];
        fixed (byte* p = buffer)
        {
            // SAFETY: the pinned buffer holds a kvm_cpuid2 header and exactly nent entries; KVM only reads.
            *(uint*)p = (uint)entries.Count;
            var e = (KvmCpuidEntry2*)(p + 8);
            for (int i = 0; i < entries.Count; i++)
            {
                var c = entries[i];
                e[i] = new KvmCpuidEntry2 { Function = c.Function, Index = c.Index, Flags = c.Flags, Eax = c.Eax, Ebx = c.Ebx, Ecx = c.Ecx, Edx = c.Edx };
            }

            Ioctl(vcpu, KVM_SET_CPUID2, (nint)p, nameof(KVM_SET_CPUID2));
        }
    }

    /// <summary>KVM_INTERRUPT (no in-kernel irqchip); returns 0 or errno (EEXIST when one is already pending).</summary>
    internal static int TryInterrupt(KvmVcpuHandle vcpu, byte vector)
    {
        uint irq = vector;
        // SAFETY: a u32 on this stack frame, only read by KVM.
        return Interop.Libc.Ioctl(vcpu, KVM_INTERRUPT, (nint)(&irq)) < 0 ? Marshal.GetLastPInvokeError() : 0;
    }

    /// <summary>KVM_SET_SIGNAL_MASK: the signal mask that applies while this vCPU is inside KVM_RUN (first 64 signals).</summary>
    internal static void SetSignalMask(KvmVcpuHandle vcpu, ulong mask)
    {
        // struct kvm_signal_mask { __u32 len; __u8 sigset[]; } with the kernel's 8-byte sigset.
        byte* buffer = stackalloc byte[12];
        // SAFETY: 12 bytes: the 4-byte length then the 8-byte kernel sigset; KVM reads len bytes after the header.
        *(uint*)buffer = 8;
        *(ulong*)(buffer + 4) = mask;
        Ioctl(vcpu, KVM_SET_SIGNAL_MASK, (nint)buffer, nameof(KVM_SET_SIGNAL_MASK));
    }

    /// <summary>KVM_X86_GET_MCE_CAP_SUPPORTED: the IA32_MCG_CAP flag bits KVM can emulate (the bank count is not in it).</summary>
    internal static ulong GetMceCapSupported(KvmSystemHandle kvm)
    {
        ulong cap = 0;
        Ioctl(kvm, KVM_X86_GET_MCE_CAP_SUPPORTED, (nint)(&cap), nameof(KVM_X86_GET_MCE_CAP_SUPPORTED));
        return cap;
    }

    /// <summary>KVM_X86_SETUP_MCE: gives the vCPU machine-check banks; <paramref name="mcgCap"/> becomes its IA32_MCG_CAP.</summary>
    internal static void SetupMce(KvmVcpuHandle vcpu, ulong mcgCap)
    {
        ulong cap = mcgCap;
        Ioctl(vcpu, KVM_X86_SETUP_MCE, (nint)(&cap), nameof(KVM_X86_SETUP_MCE));
    }
}
