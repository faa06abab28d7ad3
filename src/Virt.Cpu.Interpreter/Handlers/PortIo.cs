using Iced.Intel;
using Virt.X86;

namespace Virt.Cpu.Interpreter;

/// <summary>Port I/O handlers: IN, OUT, INS, OUTS.</summary>
internal sealed partial class InterpreterVcpu
{
    internal ulong In(ref Op op, in Instruction _) => ExecPortIo(ref op, isOut: false);

    internal ulong Out(ref Op op, in Instruction _) => ExecPortIo(ref op, isOut: true);

    internal ulong Ins(ref Op op, in Instruction _) => ExecStringIo(ref op, isOuts: false);

    internal ulong Outs(ref Op op, in Instruction _) => ExecStringIo(ref op, isOuts: true);

    private void CheckIoPermission(ushort port, int size)
    {
        if ((_cpu.Cr0 & Cr0.ProtectionEnable) == 0)
        {
            return;
        }

        if ((_cpu.Flags & VM) == 0 && _cpu.Cpl <= (int)((_cpu.Flags & IoplMask) >> 12))
        {
            return;
        }

        // Consult the I/O permission bitmap of the TSS.
        if (_cpu.Tr.Limit < 0x67)
        {
            throw Fault(Vectors.GP, 0);
        }

        ulong mapBase = ReadSystem(_cpu.Tr.Base + 0x66, 2);
        ulong byteOff = mapBase + (ulong)(port >> 3);
        if (byteOff + 1 > _cpu.Tr.Limit)
        {
            throw Fault(Vectors.GP, 0);
        }

        ulong bitsWord = ReadSystem(_cpu.Tr.Base + byteOff, 2);
        ulong need = ((1UL << size) - 1) << (port & 7);
        if ((bitsWord & need) != 0)
        {
            throw Fault(Vectors.GP, 0);
        }
    }

    private ulong ExecPortIo(ref Op op, bool isOut)
    {
        ushort port = op.Sub == 1 ? (ushort)Gpr(2) : (ushort)op.Imm;
        int size = op.Size;
        CheckIoPermission(port, size);
        CheckIoBreakpoints(port, size);
        _exitDataLength = size;
        if (_plat != null)
        {
            ulong value = isOut ? GetReg(0, size) : 0;
            if (TryPlatformPort(port, size, isOut, ref value))
            {
                if (!isOut)
                {
                    SetReg(0, size, value);
                }

                _exitDataLength = 0;
                return op.Next;
            }
        }

        if (isOut)
        {
            ulong v = GetReg(0, size);
            for (int b = 0; b < size; b++)
            {
                _exitBuffer[b] = (byte)(v >> (b * 8));
            }

            SetExit(VcpuExit.PortIo(port, size, 1, isWrite: true));
            _pendingIo = default;
        }
        else
        {
            Array.Clear(_exitBuffer, 0, size);
            SetExit(VcpuExit.PortIo(port, size, 1, isWrite: false));
            _pendingIo = new PendingIo { Kind = PendingIoKind.In, Size = size, Count = 1 };
        }

        return op.Next;
    }

    private ulong ExecStringIo(ref Op op, bool isOuts)
    {
        ushort port = (ushort)Gpr(2);
        int size = op.Size;
        int asz = op.AddrSize;
        CheckIoPermission(port, size);
        CheckIoBreakpoints(port, size);
        bool rep = (op.Pfx & (Pfx.Rep | Pfx.Repne)) != 0;
        ulong remaining = rep ? StrReg(1, asz) : 1;
        if (remaining == 0)
        {
            return op.Next;
        }

        bool down = (_cpu.Flags & DF) != 0;
        int reg = isOuts ? 6 : 7;
        int seg = isOuts ? op.Seg : SegEs;
        ulong off = StrReg(reg, asz);
        ulong lin = StrLin(seg, off);

        // As many elements as fit in the page (and the exit buffer), in the direction of travel.
        ulong inPage = down ? ((lin & 0xFFF) / (ulong)size) + 1 : (4096 - (lin & 0xFFF)) / (ulong)size;
        int count = (int)Math.Max(1, Math.Min(Math.Min(remaining, inPage), (ulong)(_exitBuffer.Length / size)));
        if (!IsRamLinear(lin, write: !isOuts))
        {
            // Memory operands in MMIO go one element per round trip: each element's MMIO access is its own exit, and
            // RSI/RDI and RCX move with every element, so the string makes progress and restarts where it stopped.
            count = 1;
        }

        long delta = down ? -size : size;
        _exitDataLength = size * count;
        if (isOuts)
        {
            for (int k = 0; k < count; k++)
            {
                ulong v = Read(StrLin(seg, (off + (ulong)(k * delta)) & Mask(asz)), size);
                for (int b = 0; b < size; b++)
                {
                    _exitBuffer[(k * size) + b] = (byte)(v >> (b * 8));
                }
            }

            StrAdvance(6, asz, delta * count);
            if (rep)
            {
                StrAdvance(1, asz, -count);
            }

            SetExit(VcpuExit.PortIo(port, size, count, isWrite: true));
            _pendingIo = default;
        }
        else
        {
            for (int k = 0; k < count; k++)
            {
                ProbeWrite(StrLin(seg, (off + (ulong)(k * delta)) & Mask(asz)), size);
            }

            Array.Clear(_exitBuffer, 0, size * count);
            SetExit(VcpuExit.PortIo(port, size, count, isWrite: false));
            _pendingIo = new PendingIo { Kind = PendingIoKind.Ins, Size = size, Count = count, Register = rep ? 1 : 0, AddrSize = asz };
        }

        if (rep && StrReg(1, asz) - (!isOuts ? (ulong)count : 0) != 0)
        {
            _notRetired = true;
            return op.Next - op.Len;
        }

        return op.Next;
    }

    /// <summary>Whether <paramref name="lin"/> is backed by guest RAM (writable RAM when <paramref name="write"/>), not MMIO.</summary>
    private bool IsRamLinear(ulong lin, bool write)
    {
        CheckCanonical(lin);
        ulong phys = Translate(lin, write ? AccWrite : AccRead, _cpu.Cpl == 3);
        int region = FindRegion(phys);
        return region >= 0 && (!write || !_regions[region].IsReadOnly);
    }

    /// <summary>Completes an IN/INS with the data the host put in <see cref="ExitData"/>.</summary>
    private void CompletePendingIo()
    {
        var p = _pendingIo;
        _pendingIo = default;
        switch (p.Kind)
        {
            case PendingIoKind.In:
            {
                ulong v = 0;
                for (int b = 0; b < p.Size; b++)
                {
                    v |= (ulong)_exitBuffer[b] << (b * 8);
                }

                SetReg(0, p.Size, v);
                break;
            }

            case PendingIoKind.Ins:
            {
                int asz = p.AddrSize;
                long delta = (_cpu.Flags & DF) != 0 ? -p.Size : p.Size;
                for (int k = 0; k < p.Count; k++)
                {
                    ulong v = 0;
                    for (int b = 0; b < p.Size; b++)
                    {
                        v |= (ulong)_exitBuffer[(k * p.Size) + b] << (b * 8);
                    }

                    // The element counts as done before it is stored: a store to MMIO ends in an exit that delivers it,
                    // and the next run goes on with the next element.
                    ulong target = StrLin(SegEs, StrReg(7, asz));
                    StrAdvance(7, asz, delta);
                    if (p.Register == 1)
                    {
                        StrAdvance(1, asz, -1);
                    }

                    try
                    {
                        Write(target, p.Size, v);
                    }
                    catch (GuestFault)
                    {
                        StrAdvance(7, asz, -delta);
                        if (p.Register == 1)
                        {
                            StrAdvance(1, asz, 1);
                        }

                        throw;
                    }
                }

                break;
            }

            case PendingIoKind.MmioRead:
            {
                ulong v = 0;
                for (int b = 0; b < p.Size; b++)
                {
                    v |= (ulong)_exitBuffer[b] << (b * 8);
                }

                if (_mmioCount > 0)
                {
                    _mmioData[_mmioCount - 1] = v;
                }

                break;
            }

            default:
                break;
        }
    }
}
