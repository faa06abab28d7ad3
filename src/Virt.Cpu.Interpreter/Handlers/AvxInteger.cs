using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using Iced.Intel;

namespace Virt.Cpu.Interpreter;

/// <summary>
/// The VEX integer and bitwise instructions that string and memory routines run in their inner loops (compares,
/// minimum and maximum, additions, logic), computed on the whole vector at once: none of them touches MXCSR or faults
/// other than through its memory operand, so they need not go through the SSE handlers lane by lane.
/// </summary>
internal sealed partial class InterpreterVcpu
{
    /// <summary>Runs a three-operand (destination, first source, second source) VEX integer or bitwise instruction; false for any other.</summary>
    [System.Diagnostics.CodeAnalysis.SuppressMessage("Maintainability", "CA1502:Avoid excessive complexity", Justification = "One line per instruction: the table of element-wise operations in code form.")]
    [SkipLocalsInit]
    private bool ExecVexElementwise(ref Op op, in Instruction ins)
    {
        var m = ins.Mnemonic;
        if (!IsElementwise(m) || ins.OpCount != 3 || ins.Op1Kind != OpKind.Register)
        {
            return false;
        }

        var a = GetY(VecIndex(ins.Op1Register));
        var b = SrcY(ref op, in ins, 2);
        Vector256<byte> r = m switch
        {
            Mnemonic.Vpand or Mnemonic.Vandps or Mnemonic.Vandpd => a & b,
            Mnemonic.Vpandn or Mnemonic.Vandnps or Mnemonic.Vandnpd => ~a & b,
            Mnemonic.Vpor or Mnemonic.Vorps or Mnemonic.Vorpd => a | b,
            Mnemonic.Vpxor or Mnemonic.Vxorps or Mnemonic.Vxorpd => a ^ b,
            Mnemonic.Vpcmpeqb => Vector256.Equals(a, b),
            Mnemonic.Vpcmpeqw => Vector256.Equals(a.AsUInt16(), b.AsUInt16()).AsByte(),
            Mnemonic.Vpcmpeqd => Vector256.Equals(a.AsUInt32(), b.AsUInt32()).AsByte(),
            Mnemonic.Vpcmpeqq => Vector256.Equals(a.AsUInt64(), b.AsUInt64()).AsByte(),
            Mnemonic.Vpcmpgtb => Vector256.GreaterThan(a.AsSByte(), b.AsSByte()).AsByte(),
            Mnemonic.Vpcmpgtw => Vector256.GreaterThan(a.AsInt16(), b.AsInt16()).AsByte(),
            Mnemonic.Vpcmpgtd => Vector256.GreaterThan(a.AsInt32(), b.AsInt32()).AsByte(),
            Mnemonic.Vpcmpgtq => Vector256.GreaterThan(a.AsInt64(), b.AsInt64()).AsByte(),
            Mnemonic.Vpminub => Vector256.Min(a, b),
            Mnemonic.Vpmaxub => Vector256.Max(a, b),
            Mnemonic.Vpminuw => Vector256.Min(a.AsUInt16(), b.AsUInt16()).AsByte(),
            Mnemonic.Vpmaxuw => Vector256.Max(a.AsUInt16(), b.AsUInt16()).AsByte(),
            Mnemonic.Vpminud => Vector256.Min(a.AsUInt32(), b.AsUInt32()).AsByte(),
            Mnemonic.Vpmaxud => Vector256.Max(a.AsUInt32(), b.AsUInt32()).AsByte(),
            Mnemonic.Vpminsb => Vector256.Min(a.AsSByte(), b.AsSByte()).AsByte(),
            Mnemonic.Vpmaxsb => Vector256.Max(a.AsSByte(), b.AsSByte()).AsByte(),
            Mnemonic.Vpminsw => Vector256.Min(a.AsInt16(), b.AsInt16()).AsByte(),
            Mnemonic.Vpmaxsw => Vector256.Max(a.AsInt16(), b.AsInt16()).AsByte(),
            Mnemonic.Vpminsd => Vector256.Min(a.AsInt32(), b.AsInt32()).AsByte(),
            Mnemonic.Vpmaxsd => Vector256.Max(a.AsInt32(), b.AsInt32()).AsByte(),
            Mnemonic.Vpaddb => a + b,
            Mnemonic.Vpaddw => (a.AsUInt16() + b.AsUInt16()).AsByte(),
            Mnemonic.Vpaddd => (a.AsUInt32() + b.AsUInt32()).AsByte(),
            Mnemonic.Vpaddq => (a.AsUInt64() + b.AsUInt64()).AsByte(),
            Mnemonic.Vpsubb => a - b,
            Mnemonic.Vpsubw => (a.AsUInt16() - b.AsUInt16()).AsByte(),
            Mnemonic.Vpsubd => (a.AsUInt32() - b.AsUInt32()).AsByte(),
            _ => (a.AsUInt64() - b.AsUInt64()).AsByte(),
        };
        SetVexDest(ins.Op0Register, r);
        return true;
    }

    private static bool IsElementwise(Mnemonic m) => m is Mnemonic.Vpand or Mnemonic.Vandps or Mnemonic.Vandpd or Mnemonic.Vpandn
        or Mnemonic.Vandnps or Mnemonic.Vandnpd or Mnemonic.Vpor or Mnemonic.Vorps or Mnemonic.Vorpd or Mnemonic.Vpxor or Mnemonic.Vxorps
        or Mnemonic.Vxorpd or Mnemonic.Vpcmpeqb or Mnemonic.Vpcmpeqw or Mnemonic.Vpcmpeqd or Mnemonic.Vpcmpeqq or Mnemonic.Vpcmpgtb
        or Mnemonic.Vpcmpgtw or Mnemonic.Vpcmpgtd or Mnemonic.Vpcmpgtq or Mnemonic.Vpminub or Mnemonic.Vpmaxub or Mnemonic.Vpminuw
        or Mnemonic.Vpmaxuw or Mnemonic.Vpminud or Mnemonic.Vpmaxud or Mnemonic.Vpminsb or Mnemonic.Vpmaxsb or Mnemonic.Vpminsw
        or Mnemonic.Vpmaxsw or Mnemonic.Vpminsd or Mnemonic.Vpmaxsd or Mnemonic.Vpaddb or Mnemonic.Vpaddw or Mnemonic.Vpaddd
        or Mnemonic.Vpaddq or Mnemonic.Vpsubb or Mnemonic.Vpsubw or Mnemonic.Vpsubd or Mnemonic.Vpsubq;
}
