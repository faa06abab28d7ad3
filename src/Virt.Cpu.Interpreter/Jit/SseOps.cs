using System.Diagnostics.CodeAnalysis;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Virt.Cpu.Interpreter.Jit;

/// <summary>
/// The SSE integer and move operations compiled code calls (see <see cref="BlockCompiler"/>): each computes exactly
/// what the interpreter's handler computes (<c>Handlers/SseInteger.cs</c>, <c>Handlers/Sse4.cs</c>) from the
/// destination and source values. They are small and aggressively inlined, so the .NET JIT turns each call in a
/// compiled block into the host's own instruction (with immediates that are constants there); where the host lacks
/// the instruction they fall back to the interpreter's own helpers.
/// </summary>
internal static unsafe class SseOps
{
    // ---- Memory (host pointers from the software TLB's hit path) ----

    /// <summary>16 bytes at <paramref name="p"/>, which lie in one RAM page the TLB maps.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<byte> Load16(nint p) => Unsafe.ReadUnaligned<Vector128<byte>>((void*)p); // SAFETY: a TLB hit for the access's first and last byte.

    /// <summary>Stores 16 bytes at <paramref name="p"/>, which lie in one writable RAM page without cached code.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Store16(nint p, Vector128<byte> v) => Unsafe.WriteUnaligned((void*)p, v); // SAFETY: as for Load16, from the write TLB.

    /// <summary>The low quadword, the upper one cleared (MOVD/MOVQ into an XMM register).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<byte> FromScalar(ulong v) => Vector128.Create(v, 0UL).AsByte();

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ulong Low(Vector128<byte> v) => v.AsUInt64().ToScalar();

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static uint MoveMask(Vector128<byte> v) => v.ExtractMostSignificantBits();

    // ---- Two-operand lane operations: destination x, source s ----

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<byte> And(Vector128<byte> x, Vector128<byte> s) => x & s;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<byte> AndNot(Vector128<byte> x, Vector128<byte> s) => ~x & s;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<byte> Or(Vector128<byte> x, Vector128<byte> s) => x | s;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<byte> Xor(Vector128<byte> x, Vector128<byte> s) => x ^ s;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<byte> AddB(Vector128<byte> x, Vector128<byte> s) => x + s;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<byte> AddW(Vector128<byte> x, Vector128<byte> s) => (x.AsUInt16() + s.AsUInt16()).AsByte();

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<byte> AddD(Vector128<byte> x, Vector128<byte> s) => (x.AsUInt32() + s.AsUInt32()).AsByte();

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<byte> AddQ(Vector128<byte> x, Vector128<byte> s) => (x.AsUInt64() + s.AsUInt64()).AsByte();

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<byte> SubB(Vector128<byte> x, Vector128<byte> s) => x - s;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<byte> SubW(Vector128<byte> x, Vector128<byte> s) => (x.AsUInt16() - s.AsUInt16()).AsByte();

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<byte> SubD(Vector128<byte> x, Vector128<byte> s) => (x.AsUInt32() - s.AsUInt32()).AsByte();

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<byte> SubQ(Vector128<byte> x, Vector128<byte> s) => (x.AsUInt64() - s.AsUInt64()).AsByte();

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<byte> CmpEqB(Vector128<byte> x, Vector128<byte> s) => Vector128.Equals(x, s);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<byte> CmpEqW(Vector128<byte> x, Vector128<byte> s) => Vector128.Equals(x.AsUInt16(), s.AsUInt16()).AsByte();

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<byte> CmpEqD(Vector128<byte> x, Vector128<byte> s) => Vector128.Equals(x.AsUInt32(), s.AsUInt32()).AsByte();

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<byte> MinUB(Vector128<byte> x, Vector128<byte> s) => Vector128.Min(x, s);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<byte> MaxUB(Vector128<byte> x, Vector128<byte> s) => Vector128.Max(x, s);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<byte> UnpackLowB(Vector128<byte> x, Vector128<byte> s) =>
        Sse2.IsSupported ? Sse2.UnpackLow(x, s) : InterpreterVcpu.Unpack<byte>(x, s, false);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<byte> UnpackLowW(Vector128<byte> x, Vector128<byte> s) =>
        Sse2.IsSupported ? Sse2.UnpackLow(x.AsUInt16(), s.AsUInt16()).AsByte() : InterpreterVcpu.Unpack<ushort>(x, s, false);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<byte> UnpackLowD(Vector128<byte> x, Vector128<byte> s) =>
        Sse2.IsSupported ? Sse2.UnpackLow(x.AsUInt32(), s.AsUInt32()).AsByte() : InterpreterVcpu.Unpack<uint>(x, s, false);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<byte> UnpackLowQ(Vector128<byte> x, Vector128<byte> s) =>
        Sse2.IsSupported ? Sse2.UnpackLow(x.AsUInt64(), s.AsUInt64()).AsByte() : InterpreterVcpu.Unpack<ulong>(x, s, false);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<byte> UnpackHighB(Vector128<byte> x, Vector128<byte> s) =>
        Sse2.IsSupported ? Sse2.UnpackHigh(x, s) : InterpreterVcpu.Unpack<byte>(x, s, true);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<byte> UnpackHighW(Vector128<byte> x, Vector128<byte> s) =>
        Sse2.IsSupported ? Sse2.UnpackHigh(x.AsUInt16(), s.AsUInt16()).AsByte() : InterpreterVcpu.Unpack<ushort>(x, s, true);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<byte> UnpackHighD(Vector128<byte> x, Vector128<byte> s) =>
        Sse2.IsSupported ? Sse2.UnpackHigh(x.AsUInt32(), s.AsUInt32()).AsByte() : InterpreterVcpu.Unpack<uint>(x, s, true);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<byte> UnpackHighQ(Vector128<byte> x, Vector128<byte> s) =>
        Sse2.IsSupported ? Sse2.UnpackHigh(x.AsUInt64(), s.AsUInt64()).AsByte() : InterpreterVcpu.Unpack<ulong>(x, s, true);

    /// <summary>PSHUFB (SSSE3): a selector byte with bit 7 set gives 0, else the byte its low four bits name.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<byte> ShuffleBytes(Vector128<byte> x, Vector128<byte> s) =>
        Ssse3.IsSupported ? Ssse3.Shuffle(x, s) : InterpreterVcpu.Pshufb(x, s);

    // ---- Immediate forms (the immediate a constant at the call site) ----

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<byte> ShuffleD(Vector128<byte> s, [ConstantExpected] byte imm) =>
        Sse2.IsSupported ? Sse2.Shuffle(s.AsUInt32(), imm).AsByte() : InterpreterVcpu.Shuffle32(s, s, imm);

    /// <summary>PSLLDQ by 0-15 bytes.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<byte> ShiftLeftBytes(Vector128<byte> x, [ConstantExpected(Max = (byte)15)] byte count) =>
        Sse2.IsSupported ? Sse2.ShiftLeftLogical128BitLane(x, count) : InterpreterVcpu.ByteShift(x, count, true);

    /// <summary>PSRLDQ by 0-15 bytes.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<byte> ShiftRightBytes(Vector128<byte> x, [ConstantExpected(Max = (byte)15)] byte count) =>
        Sse2.IsSupported ? Sse2.ShiftRightLogical128BitLane(x, count) : InterpreterVcpu.ByteShift(x, count, false);

    // Lane shifts by a count below the lane width (the compiler resolves larger counts).

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<byte> ShlW(Vector128<byte> x, int c) => Vector128.ShiftLeft(x.AsUInt16(), c).AsByte();

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<byte> ShlD(Vector128<byte> x, int c) => Vector128.ShiftLeft(x.AsUInt32(), c).AsByte();

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<byte> ShlQ(Vector128<byte> x, int c) => Vector128.ShiftLeft(x.AsUInt64(), c).AsByte();

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<byte> ShrW(Vector128<byte> x, int c) => Vector128.ShiftRightLogical(x.AsUInt16(), c).AsByte();

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<byte> ShrD(Vector128<byte> x, int c) => Vector128.ShiftRightLogical(x.AsUInt32(), c).AsByte();

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<byte> ShrQ(Vector128<byte> x, int c) => Vector128.ShiftRightLogical(x.AsUInt64(), c).AsByte();

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<byte> SarW(Vector128<byte> x, int c) => Vector128.ShiftRightArithmetic(x.AsInt16(), c).AsByte();

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<byte> SarD(Vector128<byte> x, int c) => Vector128.ShiftRightArithmetic(x.AsInt32(), c).AsByte();
}
