namespace Virt.Cpu.Interpreter;

/// <summary>Exception vectors.</summary>
internal static class Vectors
{
    public const byte DE = 0, DB = 1, NMI = 2, BP = 3, OF = 4, BR = 5, UD = 6, NM = 7, DF = 8, TS = 10, NP = 11, SS = 12, GP = 13, PF = 14, MF = 16, AC = 17, XM = 19;

    /// <summary>Whether the exception pushes an error code.</summary>
    public static bool HasErrorCode(int vector) => vector is DF or TS or NP or SS or GP or PF or AC;

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
