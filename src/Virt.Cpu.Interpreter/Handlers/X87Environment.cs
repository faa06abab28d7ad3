using System.Runtime.CompilerServices;
using Iced.Intel;
using Virt.X86;

namespace Virt.Cpu.Interpreter;

/// <summary>
/// FNSTENV/FLDENV and FNSAVE/FRSTOR in the four memory formats of the SDM (16- or 32-bit operand size, real or
/// protected mode; 64-bit mode uses the 32-bit protected-mode format). The tag word in memory is the full two-bit
/// form, computed from the register contents on a store and reduced to valid/empty on a load. The instruction and
/// data pointer selectors are stored as zero (deprecated, as on current processors).
/// </summary>
internal sealed partial class InterpreterVcpu
{
    /// <summary>The two-bit tag of physical register <paramref name="physical"/>: 0 valid, 1 zero, 2 special, 3 empty.</summary>
    private int FullTag(int physical)
    {
        if ((_cpu.Fpu.AbridgedTagWord & (1 << physical)) == 0)
        {
            return 3;
        }

        ref byte p = ref StSlot((physical - FpuTop) & 7);
        ulong mant = Unsafe.ReadUnaligned<ulong>(ref p);
        int exp = Unsafe.ReadUnaligned<ushort>(ref Unsafe.Add(ref p, 8)) & 0x7FFF;
        if (exp == 0x7FFF)
        {
            return 2;
        }

        if (exp == 0)
        {
            return mant == 0 ? 1 : 2;
        }

        return (mant >> 63) == 0 ? 2 : 0;
    }

    private ushort FullTagWord()
    {
        int tw = 0;
        for (int i = 0; i < 8; i++)
        {
            tw |= FullTag(i) << (2 * i);
        }

        return (ushort)tw;
    }

    private bool X87RealFormat => (_cpu.Cr0 & Cr0.ProtectionEnable) == 0 || (_cpu.Flags & Rflags.Virtual8086) != 0;

    /// <summary>Writes the x87 environment (14 or 28 bytes) at <paramref name="ea"/>; returns its size.</summary>
    private int StoreX87Environment(ulong ea, bool size16)
    {
        ushort fcw = _cpu.Fpu.ControlWord, fsw = _cpu.Fpu.StatusWord, ftw = FullTagWord(), fop = (ushort)(_cpu.Fpu.LastOpcode & 0x7FF);
        ulong fip = _cpu.Fpu.LastInstructionPointer, fdp = _cpu.Fpu.LastDataPointer;
        bool real = X87RealFormat;
        if (size16)
        {
            ProbeWrite(ea, 14);
            Write(ea, 2, fcw);
            Write(ea + 2, 2, fsw);
            Write(ea + 4, 2, ftw);
            Write(ea + 6, 2, fip & 0xFFFF);
            Write(ea + 8, 2, real ? (((fip >> 16) & 0xF) << 12) | fop : 0);
            Write(ea + 10, 2, fdp & 0xFFFF);
            Write(ea + 12, 2, real ? ((fdp >> 16) & 0xF) << 12 : 0);
            return 14;
        }

        ProbeWrite(ea, 28);
        Write(ea, 4, 0xFFFF0000u | fcw);
        Write(ea + 4, 4, 0xFFFF0000u | fsw);
        Write(ea + 8, 4, 0xFFFF0000u | ftw);
        if (real)
        {
            Write(ea + 12, 4, 0xFFFF0000u | (fip & 0xFFFF));
            Write(ea + 16, 4, (((fip >> 16) & 0xFFFF) << 12) | fop);
            Write(ea + 20, 4, 0xFFFF0000u | (fdp & 0xFFFF));
            Write(ea + 24, 4, ((fdp >> 16) & 0xFFFF) << 12);
        }
        else
        {
            Write(ea + 12, 4, (uint)fip);
            Write(ea + 16, 4, (ulong)fop << 16);
            Write(ea + 20, 4, (uint)fdp);
            Write(ea + 24, 4, 0xFFFF0000u);
        }

        return 28;
    }

    /// <summary>Reads the x87 environment at <paramref name="ea"/> into the state; returns its size.</summary>
    private int LoadX87Environment(ulong ea, bool size16)
    {
        bool real = X87RealFormat;
        ushort fcw, fsw, ftw, fop;
        ulong fip, fdp;
        int size;
        if (size16)
        {
            fcw = (ushort)Read(ea, 2);
            fsw = (ushort)Read(ea + 2, 2);
            ftw = (ushort)Read(ea + 4, 2);
            ulong w8 = Read(ea + 8, 2);
            fip = Read(ea + 6, 2) | (real ? ((w8 >> 12) & 0xF) << 16 : 0);
            fop = (ushort)(real ? w8 & 0x7FF : 0);
            fdp = Read(ea + 10, 2) | (real ? ((Read(ea + 12, 2) >> 12) & 0xF) << 16 : 0);
            size = 14;
        }
        else
        {
            fcw = (ushort)Read(ea, 2);
            fsw = (ushort)Read(ea + 4, 2);
            ftw = (ushort)Read(ea + 8, 2);
            ulong w16 = Read(ea + 16, 4);
            if (real)
            {
                fip = Read(ea + 12, 2) | (((w16 >> 12) & 0xFFFF) << 16);
                fop = (ushort)(w16 & 0x7FF);
                fdp = Read(ea + 20, 2) | (((Read(ea + 24, 4) >> 12) & 0xFFFF) << 16);
            }
            else
            {
                fip = Read(ea + 12, 4);
                fop = (ushort)((w16 >> 16) & 0x7FF);
                fdp = Read(ea + 20, 4);
            }

            size = 28;
        }

        _cpu.Fpu.ControlWord = fcw;
        _cpu.Fpu.StatusWord = fsw;
        UpdateFpuErrorSummary(); // ES and B follow the loaded flags and masks, whatever the image says (measured)
        byte abridged = 0;
        for (int i = 0; i < 8; i++)
        {
            abridged |= ((ftw >> (2 * i)) & 3) != 3 ? (byte)(1 << i) : (byte)0;
        }

        _cpu.Fpu.AbridgedTagWord = abridged;
        _cpu.Fpu.LastOpcode = fop;
        _cpu.Fpu.LastInstructionPointer = fip;
        _cpu.Fpu.LastDataPointer = fdp;
        return size;
    }

    /// <summary>FNSTENV/FLDENV/FNSAVE/FRSTOR; returns false when <paramref name="ins"/> is not one of them.</summary>
    private bool ExecX87Environment(ref Op op, in Instruction ins)
    {
        var m = ins.Mnemonic;
        switch (m)
        {
            case Mnemonic.Fnstenv:
            case Mnemonic.Fstenv:
                StoreX87Environment(Ea(ref op), ins.MemorySize == MemorySize.FpuEnv14);

                // FNSTENV then masks every x87 exception, so none is pending any more (ES and B clear).
                _cpu.Fpu.ControlWord |= 0x3F;
                UpdateFpuErrorSummary();
                return true;
            case Mnemonic.Fldenv:
                LoadX87Environment(Ea(ref op), ins.MemorySize == MemorySize.FpuEnv14);
                return true;
            case Mnemonic.Fnsave:
            case Mnemonic.Fsave:
            {
                ulong ea = Ea(ref op);
                bool size16 = ins.MemorySize == MemorySize.FpuState94;
                ProbeWrite(ea, size16 ? 94 : 108);
                int env = StoreX87Environment(ea, size16);
                for (int i = 0; i < 8; i++)
                {
                    ref byte p = ref StSlot(i);
                    Write(ea + (ulong)(env + (10 * i)), 8, Unsafe.ReadUnaligned<ulong>(ref p));
                    Write(ea + (ulong)(env + (10 * i) + 8), 2, Unsafe.ReadUnaligned<ushort>(ref Unsafe.Add(ref p, 8)));
                }

                // Then the state is initialised, as FNINIT does (the registers keep their contents).
                ResetFpuTop();
                _cpu.Fpu.ControlWord = 0x037F;
                _cpu.Fpu.StatusWord = 0;
                _cpu.Fpu.AbridgedTagWord = 0;
                _cpu.Fpu.LastOpcode = 0;
                _cpu.Fpu.LastInstructionPointer = 0;
                _cpu.Fpu.LastDataPointer = 0;
                return true;
            }

            case Mnemonic.Frstor:
            {
                ulong ea = Ea(ref op);
                bool size16 = ins.MemorySize == MemorySize.FpuState94;
                Span<byte> regs = stackalloc byte[80];
                int env = size16 ? 14 : 28;
                for (int i = 0; i < 10; i++)
                {
                    Unsafe.WriteUnaligned(ref regs[i * 8], Read(ea + (ulong)(env + (8 * i)), 8));
                }

                LoadX87Environment(ea, size16);
                for (int i = 0; i < 8; i++)
                {
                    ref byte p = ref StSlot(i);
                    Unsafe.WriteUnaligned(ref p, Unsafe.ReadUnaligned<ulong>(ref regs[10 * i]));
                    Unsafe.WriteUnaligned(ref Unsafe.Add(ref p, 8), Unsafe.ReadUnaligned<ushort>(ref regs[(10 * i) + 8]));
                    Unsafe.InitBlockUnaligned(ref Unsafe.Add(ref p, 10), 0, 6);
                }

                return true;
            }

            default:
                return false;
        }
    }
}
