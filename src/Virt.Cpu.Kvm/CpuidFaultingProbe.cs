using System.Runtime.InteropServices;
using static Virt.Cpu.Kvm.Interop.Kvm;

namespace Virt.Cpu.Kvm;

/// <summary>
/// Whether KVM's CPUID faulting (MSR_MISC_FEATURES_ENABLES bit 0) actually makes CPUID at CPL 3 fault on this host.
/// KVM offers it in MSR_PLATFORM_INFO because it intercepts CPUID under VMX and SVM; a KVM that runs guest user code
/// natively (PVM) can only honour it where the host processor has CPUID faulting itself, and on other processors
/// guest user code reads the host's CPUID whatever the MSR says. The answer is found once per process by running one
/// CPUID at CPL 3 in a throw-away VM with faulting on.
/// </summary>
internal static unsafe class CpuidFaultingProbe
{
    /// <summary>How the probe ended.</summary>
    internal enum Outcome
    {
        /// <summary>CPUID at CPL 3 did not complete: faulting holds.</summary>
        Enforced,

        /// <summary>CPUID at CPL 3 completed with faulting on: the MSR has no effect here.</summary>
        Ignored,

        /// <summary>The probe could not tell (KVM refused its set-up or it ended another way); KVM's word stands.</summary>
        Unknown,
    }

    private const ulong MemorySize = 0x10000;
    private const ulong Pml4 = 0x1000;
    private const ulong Pdpt = 0x2000;
    private const ulong PageDirectory = 0x3000;
    private const ulong Code = 0x4000;
    private const ulong CpuidAddress = Code + 7;

    /// <summary>Outside the memory slot but inside the mapped 2 MiB page: a store there is an MMIO exit.</summary>
    private const ulong Witness = 0x10_0000;

    private static readonly Lazy<Outcome> s_outcome = new(Run, LazyThreadSafetyMode.ExecutionAndPublication);

    /// <summary>The outcome for this host, measured on first use.</summary>
    internal static Outcome Result => s_outcome.Value;

    private static Outcome Run()
    {
        try
        {
            return Probe();
        }
        catch (HypervisorException)
        {
            return Outcome.Unknown;
        }
    }

    private static Outcome Probe()
    {
        using var kvm = KvmIoctls.TryOpenSystem(out _);
        if (kvm is null)
        {
            return Outcome.Unknown;
        }

        var info = KvmHostInfo.Get(kvm);
        if (!info.MsrSet.Contains(MsrIndex.MiscFeaturesEnables))
        {
            return Outcome.Unknown;
        }

        using var vm = KvmIoctls.CreateVm(kvm);
        byte* memory = (byte*)NativeMemory.AlignedAlloc((nuint)MemorySize, 4096);
        nint run = 0;
        try
        {
            new Span<byte>(memory, (int)MemorySize).Clear();
            WriteProgram(memory);
            KvmIoctls.SetUserMemoryRegion(vm, new KvmUserspaceMemoryRegion { Slot = 0, GuestPhysAddr = 0, MemorySize = MemorySize, UserspaceAddr = (ulong)memory });
            using var vcpu = KvmIoctls.CreateVcpu(vm, 0);
            run = KvmIoctls.MapRun(vcpu, info.VcpuMmapSize);
            KvmIoctls.SetCpuid2(vcpu, info.SupportedCpuid);
            KvmIoctls.SetSregs(vcpu, UserModeSregs(KvmIoctls.GetSregs(vcpu)));
            KvmIoctls.SetRegs(vcpu, new GeneralRegisters { Rip = Code, Rsp = MemorySize - 16, Rflags = 0x2 });
            Span<KvmMsrEntry> enable = [new KvmMsrEntry { Index = MsrIndex.MiscFeaturesEnables, Data = 1 }];
            if (KvmIoctls.TransferMsrs(vcpu, enable, set: true) != 1)
            {
                return Outcome.Unknown;
            }

            if (KvmIoctls.TryRun(vcpu) != 0)
            {
                return Outcome.Unknown;
            }

            var r = (KvmRun*)run;
            if (r->ExitReason == KVM_EXIT_MMIO && r->MmioPhysAddr == Witness && r->MmioIsWrite != 0)
            {
                return Outcome.Ignored;
            }

            // No IDT: a faulting CPUID ends in a triple fault with RIP still on the instruction.
            return r->ExitReason == KVM_EXIT_SHUTDOWN && KvmIoctls.GetRegs(vcpu).Rip == CpuidAddress ? Outcome.Enforced : Outcome.Unknown;
        }
        finally
        {
            if (run != 0)
            {
                _ = Interop.Libc.Munmap(run, (nuint)KvmHostInfo.Get(kvm).VcpuMmapSize);
            }

            NativeMemory.AlignedFree(memory);
        }
    }

    private static void WriteProgram(byte* memory)
    {
        const ulong present = 1, writable = 2, user = 4, large = 0x80;
        *(ulong*)(memory + Pml4) = Pdpt | present | writable | user;
        *(ulong*)(memory + Pdpt) = PageDirectory | present | writable | user;
        *(ulong*)(memory + PageDirectory) = present | writable | user | large; // 0..2 MiB
        ReadOnlySpan<byte> program =
        [
            0xB8, 0x01, 0x00, 0x00, 0x00,             // mov eax, 1
            0x31, 0xC9,                               // xor ecx, ecx
            0x0F, 0xA2,                               // cpuid
            0x89, 0x04, 0x25, 0x00, 0x00, 0x10, 0x00, // mov [0x100000], eax
            0xEB, 0xFE,                               // jmp $
        ];
        program.CopyTo(new Span<byte>(memory + Code, program.Length));
    }

    private static KvmSregs UserModeSregs(KvmSregs s)
    {
        var code = new KvmSegment { Base = 0, Limit = 0xFFFF_FFFF, Selector = 0x33, Type = 0xB, Present = 1, Dpl = 3, S = 1, L = 1, G = 1 };
        var data = new KvmSegment { Base = 0, Limit = 0xFFFF_FFFF, Selector = 0x2B, Type = 0x3, Present = 1, Dpl = 3, S = 1, Db = 1, G = 1 };
        s.Cs = code;
        s.Ds = s.Es = s.Ss = s.Fs = s.Gs = data;
        s.Cr3 = Pml4;
        s.Cr4 = X86.Cr4.Pae;
        s.Cr0 = X86.Cr0.ProtectionEnable | X86.Cr0.MonitorCoprocessor | X86.Cr0.ExtensionType | X86.Cr0.NumericError | X86.Cr0.WriteProtect | X86.Cr0.Paging;
        s.Efer = X86.Efer.LongModeEnable | X86.Efer.LongModeActive;
        return s;
    }
}
