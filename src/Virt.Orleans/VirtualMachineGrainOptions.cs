namespace Virt.Orleans;

/// <summary>How the silo's VM grains behave (<see cref="global::Orleans.Hosting.VirtualMachineGrainSiloBuilderExtensions.AddVirtualMachineGrains"/>).</summary>
public sealed class VirtualMachineGrainOptions
{
    /// <summary>The name of the grain storage provider that holds each VM grain's state (its spec and the reference of its last snapshot).</summary>
    public const string StorageName = "virt-vms";

    /// <summary>Save running and paused VMs to the snapshot store when their grain deactivates (default: true).</summary>
    public bool SaveOnDeactivation { get; set; } = true;

    /// <summary>How many bytes of serial console output a grain keeps, in memory and in its state (default: 64 KiB).</summary>
    public int ConsoleBufferBytes { get; set; } = 64 * 1024;

    /// <summary>
    /// Adds the silo's own parts to every VM a grain builds or restores (networks, your devices, logging), after the
    /// parts the spec asks for; a restore needs them in the same order as the build had them.
    /// </summary>
    public Func<VirtualMachineSpec, VirtualMachineBuilder, VirtualMachineBuilder>? ConfigureMachine { get; set; }
}
