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

    /// <summary>
    /// Guest RAM the silo gives its VMs in all, in MiB; placement sends a VM only to a silo with room for it.
    /// 0 (the default) means 80% of the memory available to the process.
    /// </summary>
    public long MemoryBudgetMiB { get; set; }

    /// <summary>vCPUs the silo gives its VMs in all (vCPUs are threads: overcommit is the operator's choice). 0 (the default) means 4 per host processor.</summary>
    public int VcpuBudget { get; set; }

    /// <summary>The guest RAM placement assumes for a VM whose size it does not know (a reactivation after a failure, a snapshot spec): 64 MiB by default.</summary>
    public int DefaultVmMemoryMiB { get; set; } = 64;

    /// <summary>How often the silo publishes its capacity to the cluster (and learns the others'); it also publishes on every change. Default 2 s.</summary>
    public TimeSpan CapacityPublishInterval { get; set; } = TimeSpan.FromSeconds(2);

    /// <summary>
    /// Accept live migrations on a TCP port (default true). The connection carries guest memory unencrypted and
    /// is authenticated only by a one-time token the grains exchange through Orleans: keep it on a private network.
    /// </summary>
    public bool LiveMigration { get; set; } = true;

    /// <summary>The address the migration listener binds to and advertises; null (the default) means the silo's own address.</summary>
    public System.Net.IPAddress? MigrationAddress { get; set; }

    /// <summary>The migration listener's TCP port; 0 (the default) lets the system choose one (it is published with the silo's capacity).</summary>
    public int MigrationPort { get; set; }

    /// <summary>How a live migration copies memory (rounds, size of the last copy).</summary>
    public MigrationOptions Migration { get; set; } = new();

    /// <summary>
    /// On a live move of a running guest without disks, resume it on the target as soon as its state has arrived,
    /// instead of when Orleans has handed its grain over (default false). The pause then ends before the grain state is
    /// written and the grain moves; calls still wait for the grain. If Orleans then fails to move the grain, the guest
    /// loses what it did on the target meanwhile. Read on the source silo; see docs/orleans.md for what it measured.
    /// </summary>
    public bool ResumeOnArrival { get; set; }

    /// <summary>How many VMs a drain moves at once (default 2).</summary>
    public int DrainParallelism { get; set; } = 2;
}
