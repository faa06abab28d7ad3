using Virt.Cpu;

namespace Virt;

/// <summary>The VM's stop for each vCPU exit that ends the guest.</summary>
internal static class VcpuExitStops
{
    /// <summary>How the VM stops for a vCPU exit the run loop does not serve.</summary>
    internal static VirtualMachineExit ToStop(int index, in VcpuExit exit) => exit.Reason switch
    {
        VcpuExitReason.Shutdown => new VirtualMachineExit
        {
            Reason = StopReason.Shutdown,
            VcpuIndex = index,
            Fault = exit.Fault,
            Description = $"vCPU {index} shut down (triple fault){(exit.Fault is null ? "" : ": " + exit.Fault)}",
        },
        VcpuExitReason.SystemEvent when exit.SystemEvent == SystemEventKind.Reset => new VirtualMachineExit
        {
            Reason = StopReason.Reset, VcpuIndex = index, Description = $"vCPU {index} reset the machine",
        },
        VcpuExitReason.SystemEvent when exit.SystemEvent == SystemEventKind.Shutdown => new VirtualMachineExit
        {
            Reason = StopReason.PowerOff, VcpuIndex = index, Description = $"vCPU {index} powered the machine off",
        },
        VcpuExitReason.BudgetExhausted => new VirtualMachineExit
        {
            Reason = StopReason.InstructionLimit, VcpuIndex = index, Description = $"vCPU {index} used up its instruction budget",
        },
        _ => new VirtualMachineExit
        {
            Reason = StopReason.GuestFault,
            VcpuIndex = index,
            Fault = exit.Fault,
            Description = $"vCPU {index} stopped: {exit}",
        },
    };
}
