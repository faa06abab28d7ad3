namespace Virt.X86;

/// <summary>The architectural exception vectors 0-31 (Intel SDM vol. 3, 6.3.1; AMD APM vol. 2, 8.2).</summary>
public static class ExceptionVector
{
    /// <summary>#DE (0): divide error (DIV/IDIV by zero or quotient overflow).</summary>
    public const int DivideError = 0;

    /// <summary>#DB (1): debug (single step, breakpoints in DR0-DR3).</summary>
    public const int Debug = 1;

    /// <summary>NMI (2): non-maskable interrupt.</summary>
    public const int NonMaskableInterrupt = 2;

    /// <summary>#BP (3): breakpoint (INT3).</summary>
    public const int Breakpoint = 3;

    /// <summary>#OF (4): overflow (INTO with OF set).</summary>
    public const int Overflow = 4;

    /// <summary>#BR (5): BOUND range exceeded.</summary>
    public const int BoundRange = 5;

    /// <summary>#UD (6): invalid opcode.</summary>
    public const int InvalidOpcode = 6;

    /// <summary>#NM (7): device not available (x87/SSE with CR0.TS or CR0.EM).</summary>
    public const int DeviceNotAvailable = 7;

    /// <summary>#DF (8): double fault; pushes an error code of 0.</summary>
    public const int DoubleFault = 8;

    /// <summary>Coprocessor segment overrun (9): reserved since the 486.</summary>
    public const int CoprocessorSegmentOverrun = 9;

    /// <summary>#TS (10): invalid TSS; pushes the selector.</summary>
    public const int InvalidTss = 10;

    /// <summary>#NP (11): segment not present; pushes the selector.</summary>
    public const int SegmentNotPresent = 11;

    /// <summary>#SS (12): stack-segment fault (also a non-canonical stack address).</summary>
    public const int StackFault = 12;

    /// <summary>#GP (13): general protection (also a non-canonical address).</summary>
    public const int GeneralProtection = 13;

    /// <summary>#PF (14): page fault; CR2 holds the linear address and the error code says why (see <see cref="PageFaultErrorCode"/>).</summary>
    public const int PageFault = 14;

    /// <summary>#MF (16): x87 floating-point error.</summary>
    public const int X87FloatingPoint = 16;

    /// <summary>#AC (17): alignment check; pushes an error code of 0.</summary>
    public const int AlignmentCheck = 17;

    /// <summary>#MC (18): machine check.</summary>
    public const int MachineCheck = 18;

    /// <summary>#XM (19): SIMD floating-point exception.</summary>
    public const int SimdFloatingPoint = 19;

    /// <summary>#VE (20): virtualization exception (EPT violations reflected to the guest).</summary>
    public const int Virtualization = 20;

    /// <summary>#CP (21): control-protection (CET shadow stack or branch tracking); pushes an error code.</summary>
    public const int ControlProtection = 21;

    /// <summary>#HV (28): hypervisor injection (AMD SEV-SNP).</summary>
    public const int HypervisorInjection = 28;

    /// <summary>#VC (29): VMM communication (AMD SEV-ES); pushes an error code.</summary>
    public const int VmmCommunication = 29;

    /// <summary>#SX (30): security exception (AMD SVM); pushes an error code.</summary>
    public const int Security = 30;

    /// <summary>Number of architectural exception vectors; 32 and above are interrupts.</summary>
    public const int Count = 32;

    private static readonly string[] Mnemonics =
    [
        "#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "CSO", "#TS", "#NP", "#SS", "#GP", "#PF", "#15",
        "#MF", "#AC", "#MC", "#XM", "#VE", "#CP", "#22", "#23", "#24", "#25", "#26", "#27", "#HV", "#VC", "#SX", "#31",
    ];

    /// <summary>Whether delivering <paramref name="vector"/> pushes an error code (#DF, #TS, #NP, #SS, #GP, #PF, #AC, #CP, #VC, #SX).</summary>
    public static bool HasErrorCode(int vector) => vector is DoubleFault or InvalidTss or SegmentNotPresent or StackFault
        or GeneralProtection or PageFault or AlignmentCheck or ControlProtection or VmmCommunication or Security;

    /// <summary>The manuals' short name of <paramref name="vector"/> (<c>#PF</c>, <c>NMI</c>), or <c>#</c> and the number for a reserved or non-exception vector.</summary>
    public static string Mnemonic(int vector) =>
        vector >= 0 && vector < Mnemonics.Length ? Mnemonics[vector] : "#" + vector.ToString(System.Globalization.CultureInfo.InvariantCulture);
}
