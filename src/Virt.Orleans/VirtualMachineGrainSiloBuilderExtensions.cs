using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Orleans.Persistence.FileStorage;
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
        return builder;
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
