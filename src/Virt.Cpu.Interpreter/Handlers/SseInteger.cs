using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using Iced.Intel;

namespace Virt.Cpu.Interpreter;

/// <summary>SSE2 packed-integer, logic, shuffle, unpack and pack instructions.</summary>
internal sealed partial class InterpreterVcpu
{
    private static Vector128<byte> Lanes<T>(Vector128<byte> a, Vector128<byte> b, Func<T, T, T> f)
        where T : unmanaged
    {
        int n = 16 / Unsafe.SizeOf<T>();
        Vector128<byte> r = default;
        ref T pa = ref Unsafe.As<Vector128<byte>, T>(ref a);
        ref T pb = ref Unsafe.As<Vector128<byte>, T>(ref b);
        ref T pr = ref Unsafe.As<Vector128<byte>, T>(ref r);
        for (int i = 0; i < n; i++)
        {
            Unsafe.Add(ref pr, i) = f(Unsafe.Add(ref pa, i), Unsafe.Add(ref pb, i));
        }

        return r;
    }

    /// <summary>Interleaves the low (or high) halves of <paramref name="a"/> and <paramref name="b"/> in lanes of T.</summary>
    internal static Vector128<byte> Unpack<T>(Vector128<byte> a, Vector128<byte> b, bool high)
        where T : unmanaged
    {
        int n = 16 / Unsafe.SizeOf<T>();
        int start = high ? n / 2 : 0;
        Vector128<byte> r = default;
        ref T pa = ref Unsafe.As<Vector128<byte>, T>(ref a);
        ref T pb = ref Unsafe.As<Vector128<byte>, T>(ref b);
        ref T pr = ref Unsafe.As<Vector128<byte>, T>(ref r);
        for (int i = 0; i < n / 2; i++)
        {
            Unsafe.Add(ref pr, 2 * i) = Unsafe.Add(ref pa, start + i);
            Unsafe.Add(ref pr, (2 * i) + 1) = Unsafe.Add(ref pb, start + i);
        }

        return r;
    }

    private static Vector128<byte> Mask<T>(Vector128<byte> a, Vector128<byte> b, Func<T, T, bool> f)
        where T : unmanaged
    {
        int n = 16 / Unsafe.SizeOf<T>();
        Vector128<byte> r = default;
        ref T pa = ref Unsafe.As<Vector128<byte>, T>(ref a);
        ref T pb = ref Unsafe.As<Vector128<byte>, T>(ref b);
        ref byte pr = ref Unsafe.As<Vector128<byte>, byte>(ref r);
        int w = Unsafe.SizeOf<T>();
        for (int i = 0; i < n; i++)
        {
            if (f(Unsafe.Add(ref pa, i), Unsafe.Add(ref pb, i)))
            {
                Unsafe.InitBlockUnaligned(ref Unsafe.Add(ref pr, i * w), 0xFF, (uint)w);
            }
        }

        return r;
    }

    private static Vector128<byte> Shift(Vector128<byte> a, int width, ulong count, int kind)
    {
        // kind 0 = left, 1 = right logical, 2 = right arithmetic. Counts past the lane width clear (or sign-fill).
        if (count >= (ulong)width)
        {
            if (kind != 2)
            {
                return Vector128<byte>.Zero;
            }

            count = (ulong)(width - 1);
        }

        int c = (int)count;
        return (width, kind) switch
        {
            (16, 0) => Vector128.ShiftLeft(a.AsUInt16(), c).AsByte(),
            (16, 1) => Vector128.ShiftRightLogical(a.AsUInt16(), c).AsByte(),
            (16, _) => Vector128.ShiftRightArithmetic(a.AsInt16(), c).AsByte(),
            (32, 0) => Vector128.ShiftLeft(a.AsUInt32(), c).AsByte(),
            (32, 1) => Vector128.ShiftRightLogical(a.AsUInt32(), c).AsByte(),
            (32, _) => Vector128.ShiftRightArithmetic(a.AsInt32(), c).AsByte(),
            (_, 0) => Vector128.ShiftLeft(a.AsUInt64(), c).AsByte(),
            _ => Vector128.ShiftRightLogical(a.AsUInt64(), c).AsByte(),
        };
    }

    internal static Vector128<byte> ByteShift(Vector128<byte> a, int count, bool left)
    {
        Vector128<byte> r = default;
        if (count > 15)
        {
            return r;
        }

        for (int i = 0; i < 16; i++)
        {
            int from = left ? i - count : i + count;
            if (from is >= 0 and < 16)
            {
                r = r.WithElement(i, a.GetElement(from));
            }
        }

        return r;
    }

    private static Vector128<byte> Psadbw(Vector128<byte> a, Vector128<byte> b)
    {
        ulong lo = 0, hi = 0;
        for (int i = 0; i < 8; i++)
        {
            lo += (ulong)Math.Abs(a.GetElement(i) - b.GetElement(i));
            hi += (ulong)Math.Abs(a.GetElement(i + 8) - b.GetElement(i + 8));
        }

        return Vector128.Create(lo, hi).AsByte();
    }

    private static Vector128<byte> Pmaddwd(Vector128<byte> a, Vector128<byte> b)
    {
        var x = a.AsInt16();
        var y = b.AsInt16();
        Vector128<int> r = default;
        for (int i = 0; i < 4; i++)
        {
            r = r.WithElement(i, unchecked((x.GetElement(2 * i) * y.GetElement(2 * i)) + (x.GetElement((2 * i) + 1) * y.GetElement((2 * i) + 1))));
        }

        return r.AsByte();
    }

    private static Vector128<byte> PackSigned16To8(Vector128<byte> a, Vector128<byte> b, bool unsigned)
    {
        Vector128<byte> r = default;
        for (int i = 0; i < 16; i++)
        {
            short v = (i < 8 ? a : b).AsInt16().GetElement(i & 7);
            byte o = unsigned ? (byte)Math.Clamp(v, (short)0, (short)255) : (byte)(sbyte)Math.Clamp(v, (short)-128, (short)127);
            r = r.WithElement(i, o);
        }

        return r;
    }

    private static Vector128<byte> PackSigned32To16(Vector128<byte> a, Vector128<byte> b)
    {
        Vector128<short> r = default;
        for (int i = 0; i < 8; i++)
        {
            int v = (i < 4 ? a : b).AsInt32().GetElement(i & 3);
            r = r.WithElement(i, (short)Math.Clamp(v, short.MinValue, short.MaxValue));
        }

        return r.AsByte();
    }

    internal static Vector128<byte> Shuffle32(Vector128<byte> lo, Vector128<byte> hi, int imm)
    {
        var a = lo.AsUInt32();
        var b = hi.AsUInt32();
        return Vector128.Create(a.GetElement(imm & 3), a.GetElement((imm >> 2) & 3), b.GetElement((imm >> 4) & 3), b.GetElement((imm >> 6) & 3)).AsByte();
    }

    private static Vector128<byte> Shuffle16(Vector128<byte> s, int imm, bool high)
    {
        var w = s.AsUInt16();
        int o = high ? 4 : 0;
        var r = w;
        for (int i = 0; i < 4; i++)
        {
            r = r.WithElement(o + i, w.GetElement(o + ((imm >> (2 * i)) & 3)));
        }

        return r.AsByte();
    }

    /// <summary>Two-operand packed-integer and logic instructions; returns false when <paramref name="ins"/> is not one.</summary>
    [System.Diagnostics.CodeAnalysis.SuppressMessage("Maintainability", "CA1502:Avoid excessive complexity", Justification = "One case per SSE2 integer instruction, each a line or two: the group's table in code form.")]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private bool ExecSseInteger(ref Op op, in Instruction ins)
    {
        var m = ins.Mnemonic;
        int d = XmmIndex(ins.Op0Register);
        switch (m)
        {
            case Mnemonic.Psllw:
            case Mnemonic.Pslld:
            case Mnemonic.Psllq:
            case Mnemonic.Psrlw:
            case Mnemonic.Psrld:
            case Mnemonic.Psrlq:
            case Mnemonic.Psraw:
            case Mnemonic.Psrad:
            {
                ulong count = ins.Op1Kind == OpKind.Immediate8 ? ins.Immediate8 : SrcX(ref op, in ins, 1).AsUInt64().GetElement(0);
                int width = m is Mnemonic.Psllw or Mnemonic.Psrlw or Mnemonic.Psraw ? 16 : m is Mnemonic.Psllq or Mnemonic.Psrlq ? 64 : 32;
                int kind = m is Mnemonic.Psllw or Mnemonic.Pslld or Mnemonic.Psllq ? 0 : m is Mnemonic.Psraw or Mnemonic.Psrad ? 2 : 1;
                Xr(d) = Shift(Xr(d), width, count, kind);
                return true;
            }

            case Mnemonic.Pslldq:
            case Mnemonic.Psrldq:
                Xr(d) = ByteShift(Xr(d), ins.Immediate8, m == Mnemonic.Pslldq);
                return true;
            case Mnemonic.Pshufd:
            {
                var s = SrcX(ref op, in ins, 1);
                Xr(d) = Shuffle32(s, s, ins.Immediate8);
                return true;
            }

            case Mnemonic.Pshuflw:
            case Mnemonic.Pshufhw:
                Xr(d) = Shuffle16(SrcX(ref op, in ins, 1), ins.Immediate8, m == Mnemonic.Pshufhw);
                return true;
            case Mnemonic.Shufps:
                Xr(d) = Shuffle32(Xr(d), SrcX(ref op, in ins, 1), ins.Immediate8);
                return true;
            case Mnemonic.Shufpd:
            {
                var a = Xr(d).AsUInt64();
                var b = SrcX(ref op, in ins, 1).AsUInt64();
                int imm = ins.Immediate8;
                Xr(d) = Vector128.Create(a.GetElement(imm & 1), b.GetElement((imm >> 1) & 1)).AsByte();
                return true;
            }

            default:
                break;
        }

        if (ins.OpCount != 2 || ins.Op0Kind != OpKind.Register || !ins.Op0Register.IsXMM())
        {
            return false;
        }

        if (!IntegerLaneOps[(int)m])
        {
            return false;
        }

        Xr(d) = IntegerLanes(m, Xr(d), SrcX(ref op, in ins, 1));
        return true;
    }

    /// <summary>The mnemonics <see cref="TryIntegerLanes"/> computes.</summary>
    private static readonly bool[] IntegerLaneOps = [.. Enum.GetValues<Mnemonic>().Select(m => TryIntegerLanes(m, default, default, out _))];

    private static Vector128<byte> IntegerLanes(Mnemonic m, Vector128<byte> x, Vector128<byte> s)
    {
        TryIntegerLanes(m, x, s, out var r);
        return r;
    }

    /// <summary>The two-operand packed-integer and logic operations as pure functions of the destination and source values.</summary>
    [System.Diagnostics.CodeAnalysis.SuppressMessage("Maintainability", "CA1502:Avoid excessive complexity", Justification = "One case per SSE2 integer instruction, each a line: the group's table in code form.")]
    private static bool TryIntegerLanes(Mnemonic m, Vector128<byte> x, Vector128<byte> s, out Vector128<byte> r)
    {
        switch (m)
        {
            case Mnemonic.Pand: case Mnemonic.Andps: case Mnemonic.Andpd: r = x & s; break;
            case Mnemonic.Pandn: case Mnemonic.Andnps: case Mnemonic.Andnpd: r = ~x & s; break;
            case Mnemonic.Por: case Mnemonic.Orps: case Mnemonic.Orpd: r = x | s; break;
            case Mnemonic.Pxor: case Mnemonic.Xorps: case Mnemonic.Xorpd: r = x ^ s; break;
            case Mnemonic.Paddb: r = Lanes<byte>(x, s, static (a, b) => (byte)(a + b)); break;
            case Mnemonic.Paddw: r = Lanes<ushort>(x, s, static (a, b) => (ushort)(a + b)); break;
            case Mnemonic.Paddd: r = Lanes<uint>(x, s, static (a, b) => a + b); break;
            case Mnemonic.Paddq: r = Lanes<ulong>(x, s, static (a, b) => a + b); break;
            case Mnemonic.Psubb: r = Lanes<byte>(x, s, static (a, b) => (byte)(a - b)); break;
            case Mnemonic.Psubw: r = Lanes<ushort>(x, s, static (a, b) => (ushort)(a - b)); break;
            case Mnemonic.Psubd: r = Lanes<uint>(x, s, static (a, b) => a - b); break;
            case Mnemonic.Psubq: r = Lanes<ulong>(x, s, static (a, b) => a - b); break;
            case Mnemonic.Paddsb: r = Lanes<sbyte>(x, s, static (a, b) => (sbyte)Math.Clamp(a + b, -128, 127)); break;
            case Mnemonic.Paddsw: r = Lanes<short>(x, s, static (a, b) => (short)Math.Clamp(a + b, -32768, 32767)); break;
            case Mnemonic.Paddusb: r = Lanes<byte>(x, s, static (a, b) => (byte)Math.Min(a + b, 255)); break;
            case Mnemonic.Paddusw: r = Lanes<ushort>(x, s, static (a, b) => (ushort)Math.Min(a + b, 65535)); break;
            case Mnemonic.Psubsb: r = Lanes<sbyte>(x, s, static (a, b) => (sbyte)Math.Clamp(a - b, -128, 127)); break;
            case Mnemonic.Psubsw: r = Lanes<short>(x, s, static (a, b) => (short)Math.Clamp(a - b, -32768, 32767)); break;
            case Mnemonic.Psubusb: r = Lanes<byte>(x, s, static (a, b) => (byte)Math.Max(a - b, 0)); break;
            case Mnemonic.Psubusw: r = Lanes<ushort>(x, s, static (a, b) => (ushort)Math.Max(a - b, 0)); break;
            case Mnemonic.Pmullw: r = Lanes<short>(x, s, static (a, b) => (short)(a * b)); break;
            case Mnemonic.Pmulhw: r = Lanes<short>(x, s, static (a, b) => (short)((a * b) >> 16)); break;
            case Mnemonic.Pmulhuw: r = Lanes<ushort>(x, s, static (a, b) => (ushort)((uint)(a * b) >> 16)); break;
            case Mnemonic.Pmuludq: r = Lanes<ulong>(x, s, static (a, b) => (ulong)(uint)a * (uint)b); break;
            case Mnemonic.Pmaddwd: r = Pmaddwd(x, s); break;
            case Mnemonic.Pavgb: r = Lanes<byte>(x, s, static (a, b) => (byte)((a + b + 1) >> 1)); break;
            case Mnemonic.Pavgw: r = Lanes<ushort>(x, s, static (a, b) => (ushort)((a + b + 1) >> 1)); break;
            case Mnemonic.Pminub: r = Lanes<byte>(x, s, static (a, b) => Math.Min(a, b)); break;
            case Mnemonic.Pmaxub: r = Lanes<byte>(x, s, static (a, b) => Math.Max(a, b)); break;
            case Mnemonic.Pminsw: r = Lanes<short>(x, s, static (a, b) => Math.Min(a, b)); break;
            case Mnemonic.Pmaxsw: r = Lanes<short>(x, s, static (a, b) => Math.Max(a, b)); break;
            case Mnemonic.Psadbw: r = Psadbw(x, s); break;
            case Mnemonic.Pcmpeqb: r = Mask<byte>(x, s, static (a, b) => a == b); break;
            case Mnemonic.Pcmpeqw: r = Mask<ushort>(x, s, static (a, b) => a == b); break;
            case Mnemonic.Pcmpeqd: r = Mask<uint>(x, s, static (a, b) => a == b); break;
            case Mnemonic.Pcmpgtb: r = Mask<sbyte>(x, s, static (a, b) => a > b); break;
            case Mnemonic.Pcmpgtw: r = Mask<short>(x, s, static (a, b) => a > b); break;
            case Mnemonic.Pcmpgtd: r = Mask<int>(x, s, static (a, b) => a > b); break;
            case Mnemonic.Punpcklbw: r = Unpack<byte>(x, s, false); break;
            case Mnemonic.Punpcklwd: r = Unpack<ushort>(x, s, false); break;
            case Mnemonic.Punpckldq: case Mnemonic.Unpcklps: r = Unpack<uint>(x, s, false); break;
            case Mnemonic.Punpcklqdq: case Mnemonic.Unpcklpd: r = Unpack<ulong>(x, s, false); break;
            case Mnemonic.Punpckhbw: r = Unpack<byte>(x, s, true); break;
            case Mnemonic.Punpckhwd: r = Unpack<ushort>(x, s, true); break;
            case Mnemonic.Punpckhdq: case Mnemonic.Unpckhps: r = Unpack<uint>(x, s, true); break;
            case Mnemonic.Punpckhqdq: case Mnemonic.Unpckhpd: r = Unpack<ulong>(x, s, true); break;
            case Mnemonic.Packsswb: r = PackSigned16To8(x, s, false); break;
            case Mnemonic.Packuswb: r = PackSigned16To8(x, s, true); break;
            case Mnemonic.Packssdw: r = PackSigned32To16(x, s); break;
            default: r = default; return false;
        }

        return true;

    }
}
