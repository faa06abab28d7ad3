using System.Buffers.Binary;
using System.Text;
using Virt.Cpu;

namespace Virt.Debugging;

/// <summary>
/// The x86-64 registers the GDB stub offers, in the order of its target description (which is the order of the
/// <c>g</c> packet and the numbers of <c>p</c>/<c>P</c>): GDB's <c>org.gnu.gdb.i386.core</c>, <c>.sse</c> and
/// <c>.segments</c> features, then the control registers and EFER as <c>org.virt.x86.system</c>, then the upper halves of
/// the YMM registers as <c>org.gnu.gdb.i386.avx</c> (GDB shows <c>$ymm0</c> to <c>$ymm15</c> from them and the XMM registers).
/// </summary>
internal static class GdbRegisterFile
{
    /// <summary>One register: name, size in bits, GDB type, the feature it belongs to and its group (if not the default).</summary>
    private readonly record struct Register(string Name, int Bits, string Type, int Feature, string? Group = null);

    private static readonly string[] Features = ["org.gnu.gdb.i386.core", "org.gnu.gdb.i386.sse", "org.gnu.gdb.i386.segments", "org.virt.x86.system", "org.gnu.gdb.i386.avx"];

    private static readonly string[] GeneralNames = ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"];

    // Register numbers (the index in Registers).
    internal const int Rip = 16, Eflags = 17, FirstSegment = 18, FirstX87 = 24, Fctrl = 32, FirstXmm = 40, Mxcsr = 56,
        FsBase = 57, GsBase = 58, Cr0 = 59, Cr2 = 60, Cr3 = 61, Cr4 = 62, Cr8 = 63, Efer = 64, FirstYmmHigh = 65;

    /// <summary>Offset of the AVX component (the YMM registers' upper halves) in a standard-format XSAVE image.</summary>
    private const int XsaveAvxOffset = 576;

    private static readonly Register[] Registers = Build();

    /// <summary>The number of registers.</summary>
    internal static int Count => Registers.Length;

    private static Register[] Build()
    {
        var r = new List<Register>();
        foreach (string n in GeneralNames)
        {
            r.Add(new Register(n, 64, n is "rbp" or "rsp" ? "data_ptr" : "int64", 0));
        }

        r.Add(new Register("rip", 64, "code_ptr", 0));
        r.Add(new Register("eflags", 32, "i386_eflags", 0));
        foreach (string n in new[] { "cs", "ss", "ds", "es", "fs", "gs" })
        {
            r.Add(new Register(n, 32, "int32", 0));
        }

        for (int i = 0; i < 8; i++)
        {
            r.Add(new Register($"st{i}", 80, "i387_ext", 0));
        }

        foreach (string n in new[] { "fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop" })
        {
            r.Add(new Register(n, 32, "int", 0, "float"));
        }

        for (int i = 0; i < 16; i++)
        {
            r.Add(new Register($"xmm{i}", 128, "vec128", 1));
        }

        r.Add(new Register("mxcsr", 32, "int", 1, "vector"));
        r.Add(new Register("fs_base", 64, "int", 2));
        r.Add(new Register("gs_base", 64, "int", 2));
        foreach (string n in new[] { "cr0", "cr2", "cr3", "cr4", "cr8", "efer" })
        {
            r.Add(new Register(n, 64, "int", 3, "system"));
        }

        for (int i = 0; i < 16; i++)
        {
            r.Add(new Register($"ymm{i}h", 128, "uint128", 4));
        }

        return [.. r];
    }

    /// <summary>The size of register <paramref name="number"/> in bytes.</summary>
    internal static int SizeOf(int number) => Registers[number].Bits / 8;

    /// <summary>The target description XML (<c>qXfer:features:read:target.xml</c>).</summary>
    internal static string TargetDescription { get; } = BuildDescription();

    private static string BuildDescription()
    {
        var x = new StringBuilder();
        x.Append("<?xml version=\"1.0\"?><!DOCTYPE target SYSTEM \"gdb-target.dtd\"><target version=\"1.0\">");
        x.Append("<architecture>i386:x86-64</architecture>");
        for (int f = 0; f < Features.Length; f++)
        {
            x.Append("<feature name=\"").Append(Features[f]).Append("\">");
            if (f == 0)
            {
                x.Append("<flags id=\"i386_eflags\" size=\"4\">");
                foreach (var (name, bit) in new[] { ("CF", 0), ("PF", 2), ("AF", 4), ("ZF", 6), ("SF", 7), ("TF", 8), ("IF", 9), ("DF", 10), ("OF", 11), ("NT", 14), ("RF", 16), ("VM", 17), ("AC", 18), ("VIF", 19), ("VIP", 20), ("ID", 21) })
                {
                    x.Append("<field name=\"").Append(name).Append("\" start=\"").Append(bit).Append("\" end=\"").Append(bit).Append("\"/>");
                }

                x.Append("</flags>");
            }
            else if (f == 1)
            {
                x.Append("<vector id=\"v4f\" type=\"ieee_single\" count=\"4\"/><vector id=\"v2d\" type=\"ieee_double\" count=\"2\"/>");
                x.Append("<vector id=\"v16i8\" type=\"int8\" count=\"16\"/><vector id=\"v8i16\" type=\"int16\" count=\"8\"/>");
                x.Append("<vector id=\"v4i32\" type=\"int32\" count=\"4\"/><vector id=\"v2i64\" type=\"int64\" count=\"2\"/>");
                x.Append("<union id=\"vec128\"><field name=\"v4_float\" type=\"v4f\"/><field name=\"v2_double\" type=\"v2d\"/>");
                x.Append("<field name=\"v16_int8\" type=\"v16i8\"/><field name=\"v8_int16\" type=\"v8i16\"/><field name=\"v4_int32\" type=\"v4i32\"/>");
                x.Append("<field name=\"v2_int64\" type=\"v2i64\"/><field name=\"uint128\" type=\"uint128\"/></union>");
            }

            for (int i = 0; i < Registers.Length; i++)
            {
                var reg = Registers[i];
                if (reg.Feature != f)
                {
                    continue;
                }

                x.Append("<reg name=\"").Append(reg.Name).Append("\" bitsize=\"").Append(reg.Bits).Append("\" type=\"").Append(reg.Type)
                    .Append("\" regnum=\"").Append(i).Append('"');
                if (reg.Group is { } g)
                {
                    x.Append(" group=\"").Append(g).Append('"');
                }

                x.Append("/>");
            }

            x.Append("</feature>");
        }

        x.Append("</target>");
        return x.ToString();
    }

    /// <summary>Writes register <paramref name="number"/> of <paramref name="vcpu"/> in target byte order (little endian) into <paramref name="destination"/>.</summary>
    internal static void Read(IVirtualCpu vcpu, int number, Span<byte> destination)
    {
        destination.Clear();
        if (number >= FirstYmmHigh)
        {
            // Zero when the vCPU has no AVX state (XCR0 without it, or the component in its initial state).
            var x = vcpu.GetXsaveState();
            int at = XsaveAvxOffset + ((number - FirstYmmHigh) * 16);
            if ((x.StateComponents & XsaveComponents.Avx) != 0 && x.Size >= at + 16)
            {
                x.Area.Slice(at, 16).CopyTo(destination);
            }

            return;
        }

        if (number < Rip)
        {
            var g = vcpu.GetGeneralRegisters();
            BinaryPrimitives.WriteUInt64LittleEndian(destination, General(ref g, number));
            return;
        }

        if (number is >= FirstX87 and <= Mxcsr)
        {
            var f = vcpu.GetFpuState();
            ReadFpu(in f, number, destination);
            return;
        }

        var s = vcpu.GetSpecialRegisters();
        ulong value = number switch
        {
            Rip => vcpu.GetGeneralRegisters().Rip,
            Eflags => vcpu.GetGeneralRegisters().Rflags,
            >= FirstSegment and < FirstX87 => Segment(ref s, number - FirstSegment).Selector,
            FsBase => s.Fs.Base,
            GsBase => s.Gs.Base,
            Cr0 => s.Cr0,
            Cr2 => s.Cr2,
            Cr3 => s.Cr3,
            Cr4 => s.Cr4,
            Cr8 => s.Cr8,
            _ => s.Efer,
        };
        if (destination.Length >= 8)
        {
            BinaryPrimitives.WriteUInt64LittleEndian(destination, value);
        }
        else
        {
            BinaryPrimitives.WriteUInt32LittleEndian(destination, (uint)value);
        }
    }

    private static void ReadFpu(in FpuState f, int number, Span<byte> destination)
    {
        if (number < Fctrl)
        {
            // ST(i) is physical register (TOP + i) mod 8.
            int top = (f.StatusWord >> 11) & 7;
            int physical = (top + number - FirstX87) & 7;
            ((ReadOnlySpan<byte>)f.Registers).Slice(physical * 16, 10).CopyTo(destination);
            return;
        }

        if (number >= FirstXmm && number < Mxcsr)
        {
            var copy = f;
            copy.GetXmm(number - FirstXmm).CopyTo(destination);
            return;
        }

        uint value = number switch
        {
            Fctrl => f.ControlWord,
            Fctrl + 1 => f.StatusWord,
            Fctrl + 2 => FullTagWord(in f),
            Fctrl + 4 => (uint)f.LastInstructionPointer,
            Fctrl + 6 => (uint)f.LastDataPointer,
            Fctrl + 7 => f.LastOpcode,
            Mxcsr => f.Mxcsr,
            _ => 0, // fiseg and foseg: FXSAVE's 64-bit format keeps no selectors
        };
        BinaryPrimitives.WriteUInt32LittleEndian(destination, value);
    }

    /// <summary>The x87 tag word GDB shows (two bits per register: 11 empty, 00 valid; the abridged form keeps no finer tag).</summary>
    private static uint FullTagWord(in FpuState f)
    {
        uint tags = 0;
        for (int i = 0; i < 8; i++)
        {
            if ((f.AbridgedTagWord & (1 << i)) == 0)
            {
                tags |= 3u << (i * 2);
            }
        }

        return tags;
    }

    /// <summary>Writes register <paramref name="number"/> of <paramref name="vcpu"/>; false for registers the stub does not write (segment selectors, x87 stack, YMM upper halves while XCR0 does not enable AVX state).</summary>
    internal static bool Write(IVirtualCpu vcpu, int number, ReadOnlySpan<byte> source)
    {
        if (number >= FirstYmmHigh)
        {
            var x = vcpu.GetXsaveState();
            int at = XsaveAvxOffset + ((number - FirstYmmHigh) * 16);
            if ((x.Xcr0 & (ulong)XsaveComponents.Avx) == 0 || x.Size < at + 16)
            {
                return false;
            }

            var area = x.Area.ToArray();
            source[..16].CopyTo(area.AsSpan(at));
            ulong bv = BinaryPrimitives.ReadUInt64LittleEndian(area.AsSpan(XsaveState.LegacyRegionSize));
            BinaryPrimitives.WriteUInt64LittleEndian(area.AsSpan(XsaveState.LegacyRegionSize), bv | (ulong)XsaveComponents.Avx);
            vcpu.SetXsaveState(new XsaveState(x.Xcr0, area));
            return true;
        }

        if (number <= Eflags)
        {
            var g = vcpu.GetGeneralRegisters();
            ulong value = number == Eflags ? BinaryPrimitives.ReadUInt32LittleEndian(source) : BinaryPrimitives.ReadUInt64LittleEndian(source);
            if (number == Rip)
            {
                g.Rip = value;
            }
            else if (number == Eflags)
            {
                g.Rflags = value | 2; // bit 1 always reads as one
            }
            else
            {
                General(ref g, number) = value;
            }

            vcpu.SetGeneralRegisters(g);
            return true;
        }

        if (number >= FirstXmm && number <= Mxcsr)
        {
            var f = vcpu.GetFpuState();
            if (number == Mxcsr)
            {
                f.Mxcsr = BinaryPrimitives.ReadUInt32LittleEndian(source);
            }
            else
            {
                source[..16].CopyTo(f.GetXmm(number - FirstXmm));
            }

            vcpu.SetFpuState(f);
            return true;
        }

        if (number >= FsBase)
        {
            var s = vcpu.GetSpecialRegisters();
            ulong value = BinaryPrimitives.ReadUInt64LittleEndian(source);
            switch (number)
            {
                case FsBase: s.Fs.Base = value; break;
                case GsBase: s.Gs.Base = value; break;
                case Cr0: s.Cr0 = value; break;
                case Cr2: s.Cr2 = value; break;
                case Cr3: s.Cr3 = value; break;
                case Cr4: s.Cr4 = value; break;
                case Cr8: s.Cr8 = value; break;
                default: s.Efer = value; break;
            }

            vcpu.SetSpecialRegisters(s);
            return true;
        }

        return false;
    }

    private static ref ulong General(ref GeneralRegisters g, int number)
    {
        switch (number)
        {
            case 0: return ref g.Rax;
            case 1: return ref g.Rbx;
            case 2: return ref g.Rcx;
            case 3: return ref g.Rdx;
            case 4: return ref g.Rsi;
            case 5: return ref g.Rdi;
            case 6: return ref g.Rbp;
            case 7: return ref g.Rsp;
            case 8: return ref g.R8;
            case 9: return ref g.R9;
            case 10: return ref g.R10;
            case 11: return ref g.R11;
            case 12: return ref g.R12;
            case 13: return ref g.R13;
            case 14: return ref g.R14;
            default: return ref g.R15;
        }
    }

    private static ref SegmentRegister Segment(ref SpecialRegisters s, int index)
    {
        switch (index)
        {
            case 0: return ref s.Cs;
            case 1: return ref s.Ss;
            case 2: return ref s.Ds;
            case 3: return ref s.Es;
            case 4: return ref s.Fs;
            default: return ref s.Gs;
        }
    }
}
