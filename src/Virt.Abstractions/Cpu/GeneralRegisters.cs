using System.Runtime.InteropServices;

namespace Virt.Cpu;

/// <summary>The general-purpose registers, <c>RIP</c> and <c>RFLAGS</c> of a vCPU.</summary>
/// <remarks>Field order matches KVM's <c>struct kvm_regs</c> so backends can copy it as a block.</remarks>
[StructLayout(LayoutKind.Sequential)]
public struct GeneralRegisters
{
    /// <summary>RAX.</summary>
    public ulong Rax;
    /// <summary>RBX.</summary>
    public ulong Rbx;
    /// <summary>RCX.</summary>
    public ulong Rcx;
    /// <summary>RDX.</summary>
    public ulong Rdx;
    /// <summary>RSI.</summary>
    public ulong Rsi;
    /// <summary>RDI.</summary>
    public ulong Rdi;
    /// <summary>RSP.</summary>
    public ulong Rsp;
    /// <summary>RBP.</summary>
    public ulong Rbp;
    /// <summary>R8.</summary>
    public ulong R8;
    /// <summary>R9.</summary>
    public ulong R9;
    /// <summary>R10.</summary>
    public ulong R10;
    /// <summary>R11.</summary>
    public ulong R11;
    /// <summary>R12.</summary>
    public ulong R12;
    /// <summary>R13.</summary>
    public ulong R13;
    /// <summary>R14.</summary>
    public ulong R14;
    /// <summary>R15.</summary>
    public ulong R15;
    /// <summary>The instruction pointer.</summary>
    public ulong Rip;
    /// <summary>The flags register. Bit 1 is architecturally always 1.</summary>
    public ulong Rflags;

    /// <summary>Register <paramref name="index"/> in encoding order (0 = RAX, 1 = RCX, 2 = RDX, 3 = RBX, 4 = RSP, 5 = RBP, 6 = RSI, 7 = RDI, 8-15 = R8-R15).</summary>
    public readonly ulong this[int index] => index switch
    {
        0 => Rax, 1 => Rcx, 2 => Rdx, 3 => Rbx, 4 => Rsp, 5 => Rbp, 6 => Rsi, 7 => Rdi,
        8 => R8, 9 => R9, 10 => R10, 11 => R11, 12 => R12, 13 => R13, 14 => R14, 15 => R15,
        _ => throw new ArgumentOutOfRangeException(nameof(index), index, "Register index must be 0 to 15."),
    };

    /// <summary>A formatted dump of every register, one per line pair, for diagnostics.</summary>
    public readonly override string ToString() =>
        $"rax={Rax:x16} rbx={Rbx:x16} rcx={Rcx:x16} rdx={Rdx:x16}\n" +
        $"rsi={Rsi:x16} rdi={Rdi:x16} rsp={Rsp:x16} rbp={Rbp:x16}\n" +
        $"r8 ={R8:x16} r9 ={R9:x16} r10={R10:x16} r11={R11:x16}\n" +
        $"r12={R12:x16} r13={R13:x16} r14={R14:x16} r15={R15:x16}\n" +
        $"rip={Rip:x16} rflags={Rflags:x16}";
}
