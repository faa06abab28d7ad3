using System.Diagnostics.CodeAnalysis;
using System.Runtime.CompilerServices;

namespace Virt.Cpu;

/// <summary>Eight 16-byte x87 register slots (80-bit values in the low 10 bytes of each).</summary>
[InlineArray(128)]
public struct X87RegisterFile
{
    private byte _element0;
}

/// <summary>Sixteen 16-byte XMM registers.</summary>
[InlineArray(256)]
public struct XmmRegisterFile
{
    private byte _element0;
}

/// <summary>x87 and SSE state of a vCPU, in the shape of the legacy <c>FXSAVE</c> area.</summary>
public struct FpuState
{
    /// <summary>ST0-ST7 (physical registers R0-R7), 16 bytes each.</summary>
    public X87RegisterFile Registers;
    /// <summary>x87 control word. Reset value 0x037F.</summary>
    public ushort ControlWord;
    /// <summary>x87 status word.</summary>
    public ushort StatusWord;
    /// <summary>Abridged tag word: bit i set when physical register i is valid.</summary>
    public byte AbridgedTagWord;
    /// <summary>Opcode of the last non-control x87 instruction.</summary>
    public ushort LastOpcode;
    /// <summary>Instruction pointer of the last non-control x87 instruction.</summary>
    public ulong LastInstructionPointer;
    /// <summary>Data pointer of the last x87 memory operand.</summary>
    public ulong LastDataPointer;
    /// <summary>XMM0-XMM15, 16 bytes each.</summary>
    public XmmRegisterFile Xmm;
    /// <summary>SSE control and status. Reset value 0x1F80.</summary>
    public uint Mxcsr;

    /// <summary>The state after power-on/<c>FNINIT</c>: control word 0x037F, MXCSR 0x1F80, everything else zero.</summary>
    public static FpuState Initial => new() { ControlWord = 0x037F, Mxcsr = 0x1F80 };

    /// <summary>XMM register <paramref name="index"/> as a 16-byte span.</summary>
    [UnscopedRef]
    public Span<byte> GetXmm(int index)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(index);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(index, 15);
        return ((Span<byte>)Xmm).Slice(index * 16, 16);
    }
}
