using System.Text;

namespace Virt.Cpu.Interpreter;

/// <summary>The CPUID leaves the interpreter reports: only features it implements.</summary>
internal static class Cpuid
{
    /// <summary>Physical address bits reported in leaf 0x80000008 and enforced by the page walker.</summary>
    public const int PhysicalAddressBits = 40;

    /// <summary>Linear address bits (4-level paging).</summary>
    public const int LinearAddressBits = 48;

    // Leaf 1 EDX.
    private const uint Fpu = 1u << 0, De = 1u << 2, Pse = 1u << 3, Tsc = 1u << 4, Msr = 1u << 5, Pae = 1u << 6, Cx8 = 1u << 8, Sep = 1u << 11,
        Pge = 1u << 13, Cmov = 1u << 15, Pat = 1u << 16, Clfsh = 1u << 19, Mmx = 1u << 23, Fxsr = 1u << 24, Sse = 1u << 25, Sse2 = 1u << 26;

    // Leaf 1 ECX. RDRAND (and RDSEED in leaf 7): values from the host's cryptographic generator. A guest kernel seeds its
    // random number generator from them at once instead of gathering entropy from interrupt timings, and until it is
    // seeded every request for random bytes (each new file's inode generation, for one) hashes its whole entropy pool.
    private const uint Sse3 = 1u << 0, Ssse3 = 1u << 9, Fma = 1u << 12, Cx16 = 1u << 13, Sse41 = 1u << 19, Sse42 = 1u << 20, Movbe = 1u << 22,
        Popcnt = 1u << 23, Xsave = 1u << 26, Avx = 1u << 28, F16c = 1u << 29, Rdrand = 1u << 30, HypervisorBit = 1u << 31;

    // Leaf 7 EBX. ERMS: REP MOVSB/STOSB are the fast way to copy and fill memory (here they run as bulk copies of
    // whole pages), so guests choose them over loops of moves.
    private const uint Bmi1 = 1u << 3, Avx2 = 1u << 5, Bmi2 = 1u << 8, Erms = 1u << 9, Rdseed = 1u << 18;

    // Leaf 7 EDX. FSRM: REP MOVSB is fast for short copies too. SPEC_CTRL: IA32_SPEC_CTRL with IBRS and IA32_PRED_CMD
    // with IBPB, which together with IBRS_ALL below let a guest kernel protect its indirect branches with enhanced IBRS
    // (one MSR write at boot) instead of compiling each of them into a return-based thunk (retpoline), several times
    // the cost of the branch on this processor.
    private const uint Fsrm = 1u << 4, SpecCtrl = 1u << 26, ArchCapabilitiesMsr = 1u << 29;

    /// <summary>
    /// IA32_ARCH_CAPABILITIES: the interpreter executes one instruction after another, without speculation, branch
    /// prediction or fill and store buffers that outlive an instruction, so it reports itself not affected by the
    /// speculative-execution side channels the register can rule out (SDM Vol. 4, table 2-2): RDCL_NO (Meltdown),
    /// SSB_NO, MDS_NO, PSCHANGE_MC_NO, TAA_NO, SBDR_SSDP_NO, FBSDP_NO, PSDP_NO, BHI_NO, PBRSB_NO, GDS_NO, RFDS_NO and
    /// ITS_NO (bit 62). A guest kernel then skips the mitigations these call for (page-table isolation, buffer clearing
    /// on every return to user mode, indirect-branch and return thunks), which only cost time on this processor. And
    /// IBRS_ALL (bit 1, enhanced IBRS): IBRS set once in IA32_SPEC_CTRL protects every privilege level from then on,
    /// which is trivially true here (nothing is predicted), so a kernel that wants Spectre v2 protection takes this
    /// instead of retpolines.
    /// </summary>
    public const ulong ArchCapabilities =
        (1UL << 0) | (1UL << 1) | (1UL << 4) | (1UL << 5) | (1UL << 6) | (1UL << 8) | (1UL << 13) | (1UL << 14) | (1UL << 15)
        | (1UL << 20) | (1UL << 24) | (1UL << 26) | (1UL << 27) | (1UL << 62);

    // Leaf 0x80000001 ECX / EDX.
    private const uint LahfLm = 1u << 0, Abm = 1u << 5;
    private const uint Syscall = 1u << 11, Nx = 1u << 20, Page1G = 1u << 26, Rdtscp = 1u << 27, LongMode = 1u << 29;

    public static IReadOnlyList<CpuidEntry> Build(IReadOnlyList<CpuidFeature> masked)
    {
        var vendor = Encoding.ASCII.GetBytes("GenuineIntel");
        uint V(int i) => BitConverter.ToUInt32(vendor, i);
        var brand = Encoding.ASCII.GetBytes("Virt.Sdk x86-64 interpreter".PadRight(48, '\0'));
        uint B(int i) => BitConverter.ToUInt32(brand, i);

        CpuidEntry[] list =
        [
            new(0, 0, 0, 0xD, V(0), V(8), V(4)),
            // Family 6, model 0x3A, stepping 9; CLFLUSH line 8 qwords, 1 logical processor.
            new(1, 0, 0, 0x000306A9, 0x00010800, Sse3 | Ssse3 | Fma | Cx16 | Sse41 | Sse42 | Movbe | Popcnt | Xsave | Avx | F16c | Rdrand | HypervisorBit,
                Fpu | De | Pse | Tsc | Msr | Pae | Cx8 | Sep | Pge | Cmov | Pat | Clfsh | Mmx | Fxsr | Sse | Sse2),
            new(7, 0, CpuidEntry.SignificantIndex, 0, Bmi1 | Avx2 | Bmi2 | Erms | Rdseed, 0, Fsrm | SpecCtrl | ArchCapabilitiesMsr),
            // XSAVE: x87, SSE and AVX (XCR0 bits 0-2), 832 bytes in all (EBX follows XCR0 when executed); XSAVEOPT; the AVX
            // component's size and offset.
            new(0xD, 0, CpuidEntry.SignificantIndex, 7, 832, 832, 0),
            new(0xD, 1, CpuidEntry.SignificantIndex, 1, 0, 0, 0),
            new(0xD, 2, CpuidEntry.SignificantIndex, 256, 576, 0, 0),
            new(0x80000000, 0, 0, 0x80000008, 0, 0, 0),
            new(0x80000001, 0, 0, 0, 0, LahfLm | Abm, Syscall | Nx | Page1G | Rdtscp | LongMode),
            new(0x80000002, 0, 0, B(0), B(4), B(8), B(12)),
            new(0x80000003, 0, 0, B(16), B(20), B(24), B(28)),
            new(0x80000004, 0, 0, B(32), B(36), B(40), B(44)),
            new(0x80000008, 0, 0, (uint)(PhysicalAddressBits | (LinearAddressBits << 8)), 0, 0, 0),
        ];

        return CpuidEntry.WithoutAll(list, masked).AsReadOnly();
    }
}

/// <summary>The MSRs the interpreter implements (and IA32_PRED_CMD, which is write-only and so is not listed: it holds no state).</summary>
internal static class Msrs
{
    public static readonly IReadOnlyList<uint> Supported = Array.AsReadOnly(Build());

    /// <summary>The list, joined by hand: a collection expression with a spread or LINQ's Concat would build it through framework generic code over <see langword="uint"/> (compiled in every process).</summary>
    private static uint[] Build()
    {
        uint[] platform =
        [
            MsrIndex.Tsc, MsrIndex.ApicBase, MsrIndex.SysenterCs, MsrIndex.SysenterEsp, MsrIndex.SysenterEip,
            MsrIndex.MiscEnable, MsrIndex.Pat, MsrIndex.Efer, MsrIndex.Star, MsrIndex.Lstar, MsrIndex.Cstar,
            MsrIndex.Fmask, MsrIndex.FsBase, MsrIndex.GsBase, MsrIndex.KernelGsBase, MsrIndex.TscAux,
            MsrIndex.PlatformInfo, MsrIndex.ArchCapabilities, MsrIndex.MiscFeaturesEnables, MsrIndex.SpecCtrl,
        ];
        var machineCheck = MachineCheck.MsrIndices();
        var all = new uint[platform.Length + machineCheck.Length];
        platform.CopyTo(all, 0);
        machineCheck.CopyTo(all, platform.Length);
        return all;
    }
}
