namespace Virt.Cpu;

/// <summary>The debug registers of a vCPU (SDM Vol. 3, 18.2).</summary>
public struct DebugRegisters
{
    /// <summary>DR0: linear address of breakpoint 0.</summary>
    public ulong Dr0;
    /// <summary>DR1: linear address of breakpoint 1.</summary>
    public ulong Dr1;
    /// <summary>DR2: linear address of breakpoint 2.</summary>
    public ulong Dr2;
    /// <summary>DR3: linear address of breakpoint 3.</summary>
    public ulong Dr3;
    /// <summary>DR6: debug status. Reset value 0xFFFF0FF0.</summary>
    public ulong Dr6;
    /// <summary>DR7: debug control. Reset value 0x400.</summary>
    public ulong Dr7;

    /// <summary>DR6 after reset: its reserved bits read as one.</summary>
    public const ulong Dr6Reset = 0xFFFF_0FF0;

    /// <summary>DR7 after reset: bit 10 reads as one, every breakpoint disabled.</summary>
    public const ulong Dr7Reset = 0x400;

    /// <summary>The state after power-on: no breakpoint addresses, DR6 and DR7 at their reset values.</summary>
    public static DebugRegisters Initial => new() { Dr6 = Dr6Reset, Dr7 = Dr7Reset };
}
