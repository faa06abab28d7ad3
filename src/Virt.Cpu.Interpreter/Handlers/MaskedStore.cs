using System.Runtime.Intrinsics;
using Iced.Intel;

namespace Virt.Cpu.Interpreter;

/// <summary>MASKMOVQ and MASKMOVDQU: byte-masked stores to DS:rDI.</summary>
internal sealed partial class InterpreterVcpu
{
    /// <summary>
    /// Stores the bytes of <paramref name="data"/> whose byte in <paramref name="mask"/> has its top bit set, at the
    /// implicit operand DS:rDI (a segment prefix overrides DS; the address size picks DI, EDI or RDI). The span from
    /// the first to the last selected byte is checked for writing before any byte is stored, so a fault leaves memory
    /// as it was; bytes not selected are not accessed.
    /// </summary>
    private void MaskedStore(in Instruction ins, Vector128<byte> data, Vector128<byte> mask, int width)
    {
        uint selected = mask.ExtractMostSignificantBits() & (width == 16 ? 0xFFFFu : 0xFFu);
        if (selected == 0)
        {
            return;
        }

        ulong offset = Gpr(7) & ins.Op0Kind switch
        {
            OpKind.MemorySegDI => 0xFFFFUL,
            OpKind.MemorySegEDI => 0xFFFF_FFFFUL,
            _ => ulong.MaxValue,
        };
        ulong lin = offset + _cpu.SegBase[ins.MemorySegment - Register.ES];
        if (_cpu.Bitness != 64)
        {
            UseSegment(ins.MemorySegment - Register.ES);
            lin &= 0xFFFF_FFFF;
        }

        int first = System.Numerics.BitOperations.TrailingZeroCount(selected);
        int last = 31 - System.Numerics.BitOperations.LeadingZeroCount(selected);
        ProbeWrite(lin + (ulong)first, last - first + 1);
        for (int i = first; i <= last; i++)
        {
            if ((selected & (1u << i)) != 0)
            {
                Write(lin + (ulong)i, 1, data.GetElement(i));
            }
        }
    }
}
