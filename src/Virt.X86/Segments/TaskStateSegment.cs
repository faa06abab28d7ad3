namespace Virt.X86;

/// <summary>Layout of the 64-bit task-state segment (Intel SDM vol. 3, 8.7): the stacks the processor switches to, and the I/O bitmap.</summary>
public static class TaskStateSegment
{
    /// <summary>Bytes in a 64-bit TSS without an I/O permission bitmap.</summary>
    public const int Size = 0x68;

    /// <summary>The TSS descriptor's limit for <see cref="Size"/> bytes (size minus one).</summary>
    public const uint Limit = Size - 1;

    /// <summary>Offset of RSP0: the stack for an interrupt or exception that raises the CPL to 0.</summary>
    public const int Rsp0Offset = 0x04;

    /// <summary>Offset of IST1; IST<i>n</i> is at this plus (<i>n</i> - 1) * 8, see <see cref="InterruptStackOffset"/>.</summary>
    public const int Ist1Offset = 0x24;

    /// <summary>Offset of the 16-bit I/O map base: where the I/O permission bitmap starts, relative to the TSS.</summary>
    public const int IoMapBaseOffset = 0x66;

    /// <summary>
    /// An I/O map base at the end of a <see cref="Size"/>-byte TSS: there is no bitmap, so every port access at a CPL
    /// above IOPL raises #GP.
    /// </summary>
    public const ushort NoIoBitmap = Size;

    /// <summary>Offset of IST<paramref name="index"/> (1-7).</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="index"/> is not 1-7.</exception>
    public static int InterruptStackOffset(int index)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(index, 1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(index, 7);
        return Ist1Offset + ((index - 1) * 8);
    }
}
