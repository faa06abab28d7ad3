using System.Numerics;
using System.Runtime.CompilerServices;

namespace Virt.Cpu.Interpreter;

/// <summary>Lazy arithmetic flags: the last flag-setting operation is kept and the flags computed on demand.</summary>
internal sealed partial class InterpreterVcpu
{
    private const int LzNone = 0, LzAdd = 1, LzSub = 2, LzLogic = 3, LzInc = 4, LzDec = 5, LzAdc = 6, LzSbb = 7;

    /// <summary>SHL/SHR/SAR with a non-zero count: SF, ZF, PF from the result, CF and OF kept in <see cref="CpuState.LzCf"/>, AF clear.</summary>
    private const int LzShift = 8;


    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static ulong Mask(int size) => size >= 8 ? ulong.MaxValue : (1UL << (size << 3)) - 1;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static ulong SignBit(int size) => 1UL << ((size << 3) - 1);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static long SignExtend(ulong v, int size) => size switch
    {
        1 => (sbyte)v,
        2 => (short)v,
        4 => (int)v,
        _ => (long)v,
    };

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void SetLazy(int op, ulong a, ulong b, ulong r, int size)
    {
        _cpu.LzOp = op;
        _cpu.LzA = a;
        _cpu.LzB = b;
        _cpu.LzR = r;
        _cpu.LzSize = size;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static ulong Parity(ulong r) => (BitOperations.PopCount((uint)(r & 0xFF)) & 1) == 0 ? PF : 0;

    /// <summary>Sets the six arithmetic flags eagerly, leaving the others.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void SetArith(ulong flags)
    {
        _cpu.Flags = (_cpu.Flags & ~ArithFlags) | (flags & ArithFlags);
        _cpu.LzOp = LzNone;
    }

    /// <summary>Flags SF, ZF and PF of a result, with the other arithmetic flags from <paramref name="rest"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static ulong Szp(ulong r, int size, ulong rest) =>
        rest | Parity(r) | ((r & Mask(size)) == 0 ? ZF : 0) | ((r & SignBit(size)) != 0 ? SF : 0);

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private ulong ComputeArith()
    {
        ulong a = _cpu.LzA, b = _cpu.LzB, r = _cpu.LzR;
        int size = _cpu.LzSize;
        ulong sign = SignBit(size);
        ulong f = Parity(r) | (r == 0 ? ZF : 0) | ((r & sign) != 0 ? SF : 0);
        switch (_cpu.LzOp)
        {
            case LzAdd:
                f |= (r < a ? CF : 0) | (((a ^ r) & (b ^ r) & sign) != 0 ? OF : 0) | ((a ^ b ^ r) & AF);
                break;
            case LzAdc:
                f |= ((_cpu.LzCf != 0 ? r <= a : r < a) ? CF : 0) | (((a ^ r) & (b ^ r) & sign) != 0 ? OF : 0) | ((a ^ b ^ r) & AF);
                break;
            case LzSub:
                f |= (a < b ? CF : 0) | (((a ^ b) & (a ^ r) & sign) != 0 ? OF : 0) | ((a ^ b ^ r) & AF);
                break;
            case LzSbb:
                f |= ((_cpu.LzCf != 0 ? a <= b : a < b) ? CF : 0) | (((a ^ b) & (a ^ r) & sign) != 0 ? OF : 0) | ((a ^ b ^ r) & AF);
                break;
            case LzLogic:
                break;
            case LzInc:
                f |= _cpu.LzCf | (r == sign ? OF : 0) | ((a ^ 1 ^ r) & AF);
                break;
            case LzDec:
                f |= _cpu.LzCf | (a == sign ? OF : 0) | ((a ^ 1 ^ r) & AF);
                break;
            case LzShift:
                f |= _cpu.LzCf;
                break;
            default:
                return _cpu.Flags & ArithFlags;
        }

        return f;
    }

    /// <summary>Materializes the lazy flags into <see cref="CpuState.Flags"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void Materialize()
    {
        if (_cpu.LzOp != LzNone)
        {
            _cpu.Flags = (_cpu.Flags & ~ArithFlags) | ComputeArith();
            _cpu.LzOp = LzNone;
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal ulong GetRflags()
    {
        Materialize();
        return _cpu.Flags | Fixed1;
    }

    /// <summary>Replaces RFLAGS (host or privileged path: no permission checks).</summary>
    internal void SetRflags(ulong value)
    {
        _cpu.LzOp = LzNone;
        ulong old = _cpu.Flags;
        _cpu.Flags = (value & 0x3F7FD5) | Fixed1;
        if (((old ^ _cpu.Flags) & VM) != 0)
        {
            UpdateMode();
        }
        else
        {
            UpdateAlignmentCheck();
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private ulong CarryFlag()
    {
        switch (_cpu.LzOp)
        {
            case LzNone: return _cpu.Flags & CF;
            case LzAdd: return _cpu.LzR < _cpu.LzA ? 1UL : 0;
            case LzSub: return _cpu.LzA < _cpu.LzB ? 1UL : 0;
            case LzLogic: return 0;
            default: return ComputeArith() & CF;
        }
    }

    /// <summary>Evaluates condition code <paramref name="cc"/> (0 = O, 1 = NO, 2 = B, ... 15 = G).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private bool Cond(int cc)
    {
        bool r;
        int c = cc >> 1;
        if (_cpu.LzOp != LzNone && (c == 2 || c == 4))
        {
            // ZF and SF come straight from the lazy result, whatever the operation.
            r = c == 2 ? _cpu.LzR == 0 : (_cpu.LzR & SignBit(_cpu.LzSize)) != 0;
        }
        else if (_cpu.LzOp == LzSub)
        {
            ulong a = _cpu.LzA, b = _cpu.LzB;
            int size = _cpu.LzSize;
            switch (cc >> 1)
            {
                case 1: r = a < b; break;
                case 2: r = a == b; break;
                case 3: r = a <= b; break;
                case 6: r = SignExtend(a, size) < SignExtend(b, size); break;
                case 7: r = SignExtend(a, size) <= SignExtend(b, size); break;
                default: r = CondFromFlags(cc >> 1, ComputeArith()); break;
            }
        }
        else if (_cpu.LzOp == LzLogic)
        {
            ulong v = _cpu.LzR;
            bool zero = v == 0;
            bool neg = (v & SignBit(_cpu.LzSize)) != 0;
            switch (cc >> 1)
            {
                case 0: r = false; break;
                case 1: r = false; break;
                case 2: r = zero; break;
                case 3: r = zero; break;
                case 4: r = neg; break;
                case 5: r = Parity(v) != 0; break;
                case 6: r = neg; break;
                default: r = zero || neg; break;
            }
        }
        else
        {
            r = CondFromFlags(cc >> 1, _cpu.LzOp == LzNone ? _cpu.Flags : ComputeArith());
        }

        return r ^ ((cc & 1) != 0);
    }

    private static bool CondFromFlags(int c, ulong f) => c switch
    {
        0 => (f & OF) != 0,
        1 => (f & CF) != 0,
        2 => (f & ZF) != 0,
        3 => (f & (CF | ZF)) != 0,
        4 => (f & SF) != 0,
        5 => (f & PF) != 0,
        6 => ((f & SF) != 0) != ((f & OF) != 0),
        _ => (f & ZF) != 0 || (((f & SF) != 0) != ((f & OF) != 0)),
    };
}
