namespace Virt;

/// <summary>The lifecycle state of a <see cref="VirtualMachine"/>.</summary>
public enum VirtualMachineState
{
    /// <summary>Built: memory, partition and vCPUs exist, the guest has not run.</summary>
    Created,

    /// <summary>The vCPUs are running the guest.</summary>
    Running,

    /// <summary>The vCPUs are parked; <see cref="VirtualMachine.ResumeAsync"/> continues the guest where it was.</summary>
    Paused,

    /// <summary>The guest ended or was stopped; <see cref="VirtualMachine.Exit"/> says why. It cannot run again.</summary>
    Stopped,

    /// <summary>Every resource has been released.</summary>
    Disposed,
}

/// <summary>Data of <see cref="VirtualMachine.StateChanged"/>.</summary>
public sealed class VirtualMachineStateChangedEventArgs : EventArgs
{
    /// <summary>Creates the event data.</summary>
    public VirtualMachineStateChangedEventArgs(VirtualMachineState oldState, VirtualMachineState newState)
    {
        OldState = oldState;
        NewState = newState;
    }

    /// <summary>The state before the change.</summary>
    public VirtualMachineState OldState { get; }

    /// <summary>The state after the change.</summary>
    public VirtualMachineState NewState { get; }
}
