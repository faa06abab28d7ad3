using System.Buffers.Binary;
using System.Runtime.Intrinsics;
using Iced.Intel;
using Virt.X86;

namespace Virt.Cpu.Interpreter;

/// <summary>
/// XSAVE, XSAVEOPT, XRSTOR, XGETBV and XSETBV over the three components the interpreter has: x87 (bit 0), SSE (bit 1)
/// and the upper halves of the YMM registers (bit 2), in the standard (non-compacted) format (SDM Vol. 1, chapter 13).
/// A component is reported in use (XSTATE_BV) unless it holds its initial values, which the SDM allows an implementation
/// to decide by value.
/// </summary>
internal sealed partial class InterpreterVcpu
{
    /// <summary>The XSAVE components the interpreter supports.</summary>
    internal const ulong XsaveSupported = 7;

    /// <summary>Offset and size of the AVX component (CPUID leaf 0xD, sub-leaf 2).</summary>
    internal const int XsaveAvxOffset = 576, XsaveAvxSize = 256;

    /// <summary>CPUID lists XSAVE (and with it XSAVEOPT, XGETBV, XSETBV and CR4.OSXSAVE).</summary>
    private bool _hasXsave;

    /// <summary>CPUID lists MOVBE.</summary>
    private bool _hasMovbe;

    /// <summary>Bytes of the standard-format image for the components of <paramref name="xcr0"/> (CPUID leaf 0xD, sub-leaf 0, EBX).</summary>
    internal static uint XsaveSizeFor(ulong xcr0) => (xcr0 & 4) != 0 ? XsaveAvxOffset + XsaveAvxSize : 576u;

    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
    internal ulong Xsave(ref Op op, in Instruction ins)
    {
        if (!_hasXsave || (_cpu.Cr4 & Cr4.OsXsave) == 0)
        {
            throw Fault(Vectors.UD, 0);
        }

        var m = ins.Mnemonic;
        if (m == Mnemonic.Xgetbv)
        {
            if ((uint)Gpr(1) != 0)
            {
                throw Fault(Vectors.GP, 0);
            }

            SetReg(0, 4, (uint)_cpu.Xcr0);
            SetReg(2, 4, (uint)(_cpu.Xcr0 >> 32));
            return op.Next;
        }

        if (m == Mnemonic.Xsetbv)
        {
            ulong v = ((ulong)(uint)Gpr(2) << 32) | (uint)Gpr(0);
            // CPL 0 only; XCR0 is the only register; x87 always on, nothing unsupported, AVX only with SSE.
            if (_cpu.Cpl != 0 || (_cpu.Flags & Rflags.Virtual8086) != 0 || (uint)Gpr(1) != 0 || (v & 1) == 0 || (v & ~XsaveSupported) != 0 || (v & 6) == 4)
            {
                throw Fault(Vectors.GP, 0);
            }

            _cpu.Xcr0 = v;
            return op.Next;
        }

        if ((_cpu.Cr0 & Cr0.TaskSwitched) != 0)
        {
            throw Fault(Vectors.NM, 0);
        }

        ulong ea = Ea(ref op);
        if ((ea & 63) != 0)
        {
            throw Fault(Vectors.GP, 0);
        }

        ulong rfbm = ((((ulong)(uint)Gpr(2)) << 32) | (uint)Gpr(0)) & _cpu.Xcr0;
        bool rexW = m is Mnemonic.Xsave64 or Mnemonic.Xsaveopt64 or Mnemonic.Xrstor64;
        if (m is Mnemonic.Xrstor or Mnemonic.Xrstor64)
        {
            Xrstor(ea, rfbm, rexW);
        }
        else
        {
            XsaveTo(ea, rfbm, rexW);
        }

        return op.Next;
    }

    /// <summary>XINUSE: the components that do not hold their initial values.</summary>
    private ulong XsaveInUse()
    {
        ulong inUse = 0;
        var f = _cpu.Fpu;
        if (f.ControlWord != 0x037F || f.StatusWord != 0 || f.AbridgedTagWord != 0 || f.LastOpcode != 0 || f.LastInstructionPointer != 0
            || f.LastDataPointer != 0 || ((ReadOnlySpan<byte>)f.Registers).IndexOfAnyExcept((byte)0) >= 0)
        {
            inUse |= 1;
        }

        if (((ReadOnlySpan<byte>)f.Xmm).IndexOfAnyExcept((byte)0) >= 0)
        {
            inUse |= 2;
        }

        if (((ReadOnlySpan<byte>)_cpu.YmmHigh).IndexOfAnyExcept((byte)0) >= 0)
        {
            inUse |= 4;
        }

        return inUse;
    }

    private void XsaveTo(ulong ea, ulong rfbm, bool rexW)
    {
        int size = (int)XsaveSizeFor(rfbm);
        ProbeWrite(ea, size);
        Span<byte> legacy = stackalloc byte[FxsaveSize];
        FillFxsaveImage(legacy, rexW);
        if ((rfbm & 1) != 0)
        {
            WriteBytes(ea, legacy[..FxMxcsr]);
            WriteBytes(ea + FxSt, legacy[FxSt..FxXmm]);
        }

        if ((rfbm & 6) != 0)
        {
            WriteBytes(ea + FxMxcsr, legacy[FxMxcsr..FxSt]);
        }

        if ((rfbm & 2) != 0)
        {
            WriteBytes(ea + FxXmm, legacy.Slice(FxXmm, XmmImageBytes));
        }

        if ((rfbm & 4) != 0)
        {
            WriteBytes(ea + XsaveAvxOffset, ((ReadOnlySpan<byte>)_cpu.YmmHigh)[..XmmImageBytes]);
        }

        // XSTATE_BV: the saved components' bits become XINUSE; the others keep what memory held.
        ulong bv = Read(ea + 512, 8);
        Write(ea + 512, 8, (bv & ~rfbm) | (XsaveInUse() & rfbm));
    }

    private void Xrstor(ulong ea, ulong rfbm, bool rexW)
    {
        // The header: XSTATE_BV within XCR0, XCOMP_BV zero (no compacted form), bytes 16-63 zero.
        ulong bv = Read(ea + 512, 8);
        if ((bv & ~_cpu.Xcr0) != 0)
        {
            throw Fault(Vectors.GP, 0);
        }

        for (int i = 8; i < 64; i += 8)
        {
            if (Read(ea + 512 + (ulong)i, 8) != 0)
            {
                throw Fault(Vectors.GP, 0);
            }
        }

        uint mxcsr = _cpu.Fpu.Mxcsr;
        if ((rfbm & 6) != 0)
        {
            mxcsr = (uint)Read(ea + FxMxcsr, 4);
            if ((mxcsr & ~MxcsrMask) != 0)
            {
                throw Fault(Vectors.GP, 0);
            }
        }

        // Read everything first, so a fault leaves the registers as they were.
        Span<byte> legacy = stackalloc byte[FxsaveSize];
        ReadBytes(ea, legacy);
        Span<byte> upper = stackalloc byte[XsaveAvxSize];
        if ((rfbm & bv & 4) != 0)
        {
            ReadBytes(ea + XsaveAvxOffset, upper);
        }

        if ((rfbm & 1) != 0)
        {
            if ((bv & 1) != 0)
            {
                LoadFxsaveX87(legacy, rexW);
            }
            else
            {
                var init = FpuState.Initial;
                init.Xmm = _cpu.Fpu.Xmm;
                init.Mxcsr = _cpu.Fpu.Mxcsr;
                _cpu.Fpu = init;
            }
        }

        if ((rfbm & 2) != 0)
        {
            if ((bv & 2) != 0)
            {
                legacy.Slice(FxXmm, XmmImageBytes).CopyTo(_cpu.Fpu.Xmm);
            }
            else
            {
                ((Span<byte>)_cpu.Fpu.Xmm)[..XmmImageBytes].Clear();
            }
        }

        if ((rfbm & 4) != 0)
        {
            if ((bv & 4) != 0)
            {
                upper[..XmmImageBytes].CopyTo(_cpu.YmmHigh);
            }
            else
            {
                ((Span<byte>)_cpu.YmmHigh)[..XmmImageBytes].Clear();
            }
        }

        _cpu.Fpu.Mxcsr = mxcsr;
    }

    /// <summary>Bytes of the XMM (or YMM upper) registers an image holds: 16 registers in 64-bit mode, 8 outside it.</summary>
    private int XmmImageBytes => (_cpu.Bitness == 64 ? 16 : 8) * 16;

    private void WriteBytes(ulong ea, ReadOnlySpan<byte> bytes)
    {
        int i = 0;
        for (; i + 8 <= bytes.Length; i += 8)
        {
            Write(ea + (ulong)i, 8, BinaryPrimitives.ReadUInt64LittleEndian(bytes[i..]));
        }

        for (; i < bytes.Length; i++)
        {
            Write(ea + (ulong)i, 1, bytes[i]);
        }
    }

    private void ReadBytes(ulong ea, Span<byte> bytes)
    {
        int i = 0;
        for (; i + 8 <= bytes.Length; i += 8)
        {
            BinaryPrimitives.WriteUInt64LittleEndian(bytes[i..], Read(ea + (ulong)i, 8));
        }

        for (; i < bytes.Length; i++)
        {
            bytes[i] = (byte)Read(ea + (ulong)i, 1);
        }
    }

    /// <summary>MOVBE: a load or store of a general register with its bytes in reverse order.</summary>
    internal ulong Movbe(ref Op op, in Instruction ins)
    {
        if (!_hasMovbe)
        {
            throw Fault(Vectors.UD, 0);
        }

        int size = ins.MemorySize.GetSize();
        ulong ea = Ea(ref op);
        if (ins.Op0Kind == OpKind.Register)
        {
            ulong v = Read(ea, size);
            SetReg(Translator.RegIndex(ins.Op0Register), size, Swap(v, size));
        }
        else
        {
            Write(ea, size, Swap(GetReg(Translator.RegIndex(ins.Op1Register), size), size));
        }

        return op.Next;

        static ulong Swap(ulong v, int size) => size switch
        {
            2 => BinaryPrimitives.ReverseEndianness((ushort)v),
            4 => BinaryPrimitives.ReverseEndianness((uint)v),
            _ => BinaryPrimitives.ReverseEndianness(v),
        };
    }

    /// <summary>The vCPU's XSAVE image: x87, SSE and, when XCR0 enables it, the AVX component.</summary>
    private XsaveState BuildXsaveState()
    {
        if ((_cpu.Xcr0 & 4) == 0 && ((ReadOnlySpan<byte>)_cpu.YmmHigh).IndexOfAnyExcept((byte)0) < 0)
        {
            return XsaveState.FromFpu(_cpu.Fpu, _cpu.Xcr0);
        }

        var area = new byte[XsaveAvxOffset + XsaveAvxSize];
        XsaveState.FromFpu(_cpu.Fpu).CopyTo(area);
        BinaryPrimitives.WriteUInt64LittleEndian(area.AsSpan(512), 7);
        ((ReadOnlySpan<byte>)_cpu.YmmHigh).CopyTo(area.AsSpan(XsaveAvxOffset));
        return new XsaveState(_cpu.Xcr0 | 1, area);
    }

    /// <summary>Loads an XSAVE image (x87, SSE, AVX); other components must be absent or in their initial state.</summary>
    private void LoadXsaveState(XsaveState state)
    {
        if ((state.Xcr0 & ~XsaveSupported) != 0 || (state.Xcr0 & 6) == 4)
        {
            throw new ArgumentException(
                $"XCR0 0x{state.Xcr0:x} enables {(XsaveComponents)(state.Xcr0 & ~XsaveSupported)}; the interpreter has x87, SSE and AVX state only.", nameof(state));
        }

        var components = state.StateComponents;
        var beyond = components & ~(XsaveComponents)XsaveSupported;
        int end = (components & XsaveComponents.Avx) != 0 ? XsaveAvxOffset + XsaveAvxSize : XsaveState.MinimumSize;
        if ((components & XsaveComponents.Avx) != 0 && state.Size < end)
        {
            throw new ArgumentException($"The XSAVE image marks AVX state present but holds {state.Size} bytes, fewer than the {end} its AVX component needs.", nameof(state));
        }

        if (beyond != 0 && state.Size > end && state.Area[end..].IndexOfAnyExcept((byte)0) >= 0)
        {
            throw new ArgumentException($"The XSAVE image holds {beyond} state; the interpreter has x87, SSE and AVX state only.", nameof(state));
        }

        _cpu.Fpu = state.Fpu;
        _cpu.Xcr0 = state.Xcr0 | 1;
        if ((components & XsaveComponents.Avx) != 0)
        {
            state.Area.Slice(XsaveAvxOffset, XsaveAvxSize).CopyTo(_cpu.YmmHigh);
        }
        else
        {
            _cpu.YmmHigh = default;
        }
    }

    /// <summary>The upper half of YMM register <paramref name="i"/> (for tests and the debugger).</summary>
    internal Vector128<byte> GetYmmHigh(int i) => Yh(i);
}
