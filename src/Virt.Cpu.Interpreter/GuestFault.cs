using Virt.X86;

namespace Virt.Cpu.Interpreter;

/// <summary>Exception vectors.</summary>
internal static class Vectors
{
    public const byte DE = ExceptionVector.DivideError, DB = ExceptionVector.Debug, NMI = ExceptionVector.NonMaskableInterrupt,
        BP = ExceptionVector.Breakpoint, OF = ExceptionVector.Overflow, BR = ExceptionVector.BoundRange, UD = ExceptionVector.InvalidOpcode,
        NM = ExceptionVector.DeviceNotAvailable, DF = ExceptionVector.DoubleFault, TS = ExceptionVector.InvalidTss,
        NP = ExceptionVector.SegmentNotPresent, SS = ExceptionVector.StackFault, GP = ExceptionVector.GeneralProtection,
        PF = ExceptionVector.PageFault, MF = ExceptionVector.X87FloatingPoint, AC = ExceptionVector.AlignmentCheck,
        XM = ExceptionVector.SimdFloatingPoint;

    /// <summary>Whether the exception pushes an error code.</summary>
    public static bool HasErrorCode(int vector) => ExceptionVector.HasErrorCode(vector);

    /// <summary>Contributory exceptions (a second one while delivering the first is a double fault).</summary>
    public static bool IsContributory(int vector) => vector is DE or TS or NP or SS or GP;
}

/// <summary>
/// A guest exception raised while executing an instruction. One instance per vCPU is reused: raising a
/// fault allocates nothing.
/// </summary>
internal sealed class GuestFault : Exception
{
    public GuestFault()
    {
    }

    public GuestFault(string message) : base(message)
    {
    }

    public GuestFault(string message, Exception inner) : base(message, inner)
    {
    }

    public int Vector { get; set; }

    public uint ErrorCode { get; set; }
}
