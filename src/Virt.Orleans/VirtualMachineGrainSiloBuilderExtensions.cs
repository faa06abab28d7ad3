using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Orleans.Persistence.FileStorage;
using Orleans.Runtime;
using Virt.Orleans;

namespace Orleans.Hosting;

/// <summary>Silo configuration for VM grains (<see cref="IVirtualMachineGrain"/>).</summary>
public static class VirtualMachineGrainSiloBuilderExtensions
{
    /// <summary>
    /// Lets the silo host VM grains. They also need a snapshot store (an <see cref="ISnapshotStore"/> service) and a
    /// grain storage provider named <see cref="VirtualMachineGrainOptions.StorageName"/>, both reachable from every
    /// silo: <see cref="AddVirtualMachineFileStorage"/> adds both over a directory.
    /// </summary>
    public static ISiloBuilder AddVirtualMachineGrains(this ISiloBuilder builder, Action<VirtualMachineGrainOptions>? configure = null)
    {
        ArgumentNullException.ThrowIfNull(builder);
        var options = builder.Services.AddOptions<VirtualMachineGrainOptions>();
        if (configure is not null)
        {
            options.Configure(configure);
        }

        options.Validate(o => o.ConsoleBufferBytes is > 0 and <= 64 << 20, "VirtualMachineGrainOptions.ConsoleBufferBytes must be between 1 and 64 MiB.");
        options.Validate(o => o.MemoryBudgetMiB >= 0 && o.VcpuBudget >= 0 && o.DefaultVmMemoryMiB > 0, "VirtualMachineGrainOptions: MemoryBudgetMiB and VcpuBudget must not be negative, DefaultVmMemoryMiB must be positive.");
        options.Validate(o => o.CapacityPublishInterval > TimeSpan.Zero && o.DrainParallelism > 0 && o.MigrationPort is >= 0 and <= 65535 && o.Migration is not null, "VirtualMachineGrainOptions: CapacityPublishInterval and DrainParallelism must be positive, MigrationPort a TCP port (0: any), Migration set.");
        var services = builder.Services;
        services.TryAddSingleton<LocalVirtualMachines>();
        services.TryAddSingleton<ClusterCapacityView>();
        services.TryAddSingleton<CapacityPublisher>();
        services.TryAddSingleton<MigrationListener>();
        services.AddSingleton<ILifecycleParticipant<ISiloLifecycle>>(sp => sp.GetRequiredService<CapacityPublisher>());
        services.AddSingleton<ILifecycleParticipant<ISiloLifecycle>>(sp => sp.GetRequiredService<MigrationListener>());
        builder.AddPlacementDirector<CapacityPlacement, CapacityPlacementDirector>();
        builder.AddPlacementDirector<SiloPinnedPlacement, SiloPinnedPlacementDirector>();
        builder.AddOutgoingGrainCallFilter<VirtualMachineDemandFilter>();
        return builder;
    }

    /// <summary>
    /// Runs the sandbox service (<see cref="ISandboxGrain"/>) on this silo: one pool per program that
    /// <paramref name="configure"/> registers (<see cref="SandboxServiceOptions.AddProgram"/>), with its limits and queue.
    /// Every silo that should serve sandbox calls adds it, with the same program names; it needs
    /// <see cref="AddVirtualMachineGrains"/> (which publishes the pools' use to the cluster).
    /// </summary>
    public static ISiloBuilder AddSandboxService(this ISiloBuilder builder, Action<SandboxServiceOptions> configure)
    {
        ArgumentNullException.ThrowIfNull(builder);
        ArgumentNullException.ThrowIfNull(configure);
        builder.Services.AddOptions<SandboxServiceOptions>()
            .Configure(configure)
            .Validate(o => o.MaxWaitingCalls >= 0 && o.MaxTimeLimit > TimeSpan.Zero && o.MaxInputBytes >= 0, "SandboxServiceOptions: MaxWaitingCalls and MaxInputBytes must not be negative, MaxTimeLimit must be positive.");
        builder.Services.TryAddSingleton<LocalSandboxPools>();
        return builder;
    }

    /// <summary>
    /// Lets a cluster client create VM grains with capacity placement: the client tells placement each new VM's size.
    /// Without it, a VM a client creates is placed as if it had <see cref="VirtualMachineGrainOptions.DefaultVmMemoryMiB"/>.
    /// </summary>
    public static IClientBuilder AddVirtualMachineClient(this IClientBuilder builder)
    {
        ArgumentNullException.ThrowIfNull(builder);
        return builder.AddOutgoingGrainCallFilter<VirtualMachineDemandFilter>();
    }

    /// <summary>
    /// Keeps VM grains' snapshots (<see cref="FileSystemSnapshotStore"/>) and their grain state (Orleans' file grain
    /// storage, as provider <see cref="VirtualMachineGrainOptions.StorageName"/>) under <paramref name="directory"/>:
    /// <c>snapshots/</c> and <c>state/</c>. For a cluster on one host, or silos that share the directory.
    /// </summary>
    /// <exception cref="ArgumentException"><paramref name="directory"/> is empty.</exception>
    public static ISiloBuilder AddVirtualMachineFileStorage(this ISiloBuilder builder, string directory)
    {
        ArgumentNullException.ThrowIfNull(builder);
        ArgumentException.ThrowIfNullOrEmpty(directory);
        string root = Path.GetFullPath(directory);
        builder.Services.TryAddSingleton<ISnapshotStore>(_ => new FileSystemSnapshotStore(Path.Combine(root, "snapshots")));
        builder.AddFileGrainStorage(VirtualMachineGrainOptions.StorageName, o => o.RootDirectory = Path.Combine(root, "state"));
        return builder;
    }
}
