using System.Runtime.CompilerServices;
using Iced.Intel;
using Virt.X86;

namespace Virt.Cpu.Interpreter;

/// <summary>
/// Segment limit and type checks of data accesses in protected mode outside 64-bit mode (legacy 16/32-bit code,
/// compatibility mode and virtual-8086 mode; SDM Vol. 3, 5.3 and 5.5): an access must lie within the segment's
/// limit (above it, up to 64 KiB or 4 GiB, for an expand-down segment), may not write a code or read-only data
/// segment nor read an execute-only one, and may not use a null (unusable) segment. Violations raise #GP(0), or
/// #SS(0) for stack-segment accesses. 64-bit mode has none of these checks for data (its FS and GS bases are used
/// as they are).
/// </summary>
/// <remarks>
/// While every segment register holds a flat segment (base any, 4 GiB limit, expand-up, read/write data or
/// readable code) no access can fail a limit or type check, so nothing is checked and nothing costs: what 32-bit
/// operating systems use runs at full speed. As soon as one segment is not flat (or in virtual-8086 mode, whose
/// segments have 64 KiB limits) translations stop being cached, every data access takes the slow path, which
/// checks it against the segment its address was formed with, and compiled blocks (which form addresses inline)
/// do not run. Writes through a CS override are refused at address formation even with flat segments.
/// </remarks>
internal sealed partial class InterpreterVcpu
{
    /// <summary>Some segment is not flat in a mode with segment checks: see the type's remarks.</summary>
    private bool _segCheck;

    /// <summary>The segment register the current data access's address was formed with; -1 when none.</summary>
    private int _accessSeg = -1;

    /// <summary>Protected mode outside 64-bit and virtual-8086 mode: null segments and writes through CS are refused.</summary>
    private bool _segProtected;

    private InstructionInfoFactory? _infoFactory;

    /// <summary>Whether the segment checks apply in the current mode: protected mode outside 64-bit mode.</summary>
    private bool SegmentChecksApply => (_cpu.Cr0 & Cr0.ProtectionEnable) != 0 && _cpu.Bitness != 64;

    /// <summary>Recomputes <see cref="_segCheck"/> after a segment register, CR0, EFER or the mode changed.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal void UpdateSegmentCheck()
    {
        _segProtected = SegmentChecksApply && (_cpu.Flags & VM) == 0;
        bool on = false;
        if (SegmentChecksApply)
        {
            on = (_cpu.Flags & VM) != 0;
            for (int s = 0; s < 6 && !on; s++)
            {
                on = !IsFlat(in _cpu.Seg[s], s == SegCs);
            }
        }

        if (on != _segCheck)
        {
            _segCheck = on;
            if (on)
            {
                FlushTlb();
            }
        }
    }

    private static bool IsFlat(in SegmentRegister s, bool code)
    {
        if (s.Unusable || !s.Present || s.Limit != 0xFFFFFFFF)
        {
            return false;
        }

        // Code: readable (writes through CS are refused where the address is formed). Data: writable, expand-up.
        return code ? (s.Type & 0xA) == 0xA : (s.Type & 0xE) == 0x2;
    }

    /// <summary>
    /// Address formation through segment <paramref name="seg"/> outside 64-bit mode: remembers the segment for the
    /// access's checks and refuses a null segment at once (in protected mode).
    /// </summary>
    private void UseSegment(int seg)
    {
        _accessSeg = seg;
        if (_segProtected && _cpu.Seg[seg].Unusable)
        {
            throw Fault(seg == SegSs ? Vectors.SS : Vectors.GP, 0);
        }
    }

    /// <summary>A memory operand formed through CS in protected mode: #GP(0) when the instruction writes it.</summary>
    private void CheckCodeSegmentWrite(ref Op op)
    {
        if (_segProtected && _lastBlock != null && op.Slot < _lastBlock.Count && WritesMemory(in _lastBlock.Instrs[op.Slot]))
        {
            throw Fault(Vectors.GP, 0);
        }
    }

    private bool WritesMemory(in Instruction ins)
    {
        _infoFactory ??= new InstructionInfoFactory();
        foreach (var m in _infoFactory.GetInfo(in ins).GetUsedMemory())
        {
            if (m.Access is OpAccess.Write or OpAccess.CondWrite or OpAccess.ReadWrite or OpAccess.ReadCondWrite)
            {
                return true;
            }
        }

        return false;
    }

    /// <summary>
    /// The limit and type checks of a data access of <paramref name="size"/> bytes at <paramref name="lin"/> through
    /// the segment its address was formed with (<see cref="_accessSeg"/>).
    /// </summary>
    private void CheckSegmentAccess(ulong lin, int size, bool write)
    {
        int s = _accessSeg;
        if (s < 0)
        {
            return;
        }

        ref readonly SegmentRegister seg = ref _cpu.Seg[s];
        int vector = s == SegSs ? Vectors.SS : Vectors.GP;
        bool code = (seg.Type & 8) != 0;
        if ((_cpu.Flags & VM) == 0)
        {
            if (seg.Unusable)
            {
                throw Fault(vector, 0);
            }

            if (write ? code || (seg.Type & 2) == 0 : code && (seg.Type & 2) == 0)
            {
                throw Fault(vector, 0);
            }
        }

        ulong off = (lin - _cpu.SegBase[s]) & 0xFFFFFFFF;
        ulong last = off + (ulong)size - 1;
        if (!code && (seg.Type & 4) != 0)
        {
            // Expand-down: the valid offsets lie above the limit, up to 64 KiB or 4 GiB by the B flag.
            ulong upper = seg.DefaultBig ? 0xFFFFFFFFUL : 0xFFFFUL;
            if (off <= seg.Limit || last > upper)
            {
                throw Fault(vector, 0);
            }
        }
        else if (last > seg.Limit)
        {
            throw Fault(vector, 0);
        }
    }
}
