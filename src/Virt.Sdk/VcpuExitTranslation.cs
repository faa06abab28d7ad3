using Virt.Cpu;

namespace Virt;

/// <summary>Turns a vCPU exit that ends the VM into the <see cref="VirtualMachineExit"/> users see.</summary>
internal static class VcpuExitTranslation
{
    public static VirtualMachineExit Translate(int index, in VcpuExit exit) => exit.Reason switch
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
