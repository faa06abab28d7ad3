using Microsoft.Extensions.Logging;

namespace Virt;

/// <summary>
/// The cold reset of a stopped VM: the machine it ran is released and a new one is assembled from the same
/// configuration, as <see cref="VirtualMachineBuilder.Build"/> did. Guest memory is reloaded from the images, kernel and
/// initial RAM disk the builder kept; every device is created again by its factory (disk images reopened, user
/// networks and their forwards bound again, ports re-attached); the vCPUs are new, in their start state. Devices and
/// backends the caller passed in as instances (an <c>IBlockBackend</c>, an <c>INetworkBackend</c>, streams) are reused
/// as they are.
/// </summary>
internal static class MachineReset
{
    /// <summary>Why a VM built from <paramref name="config"/> cannot be reset, or null when it can.</summary>
    public static string? WhyNot(VirtualMachineConfiguration config) => config.Restore is null
        ? null
        : "it was restored from a snapshot (or received by migration), whose state was read once and is not kept; "
          + "restore the snapshot again for a new VM in that state";

    /// <summary>
    /// Releases <paramref name="old"/> (first, so that what it holds exclusively, such as disk image locks and forwarded
    /// host ports, is free again) and assembles the machine <paramref name="config"/> describes anew.
    /// </summary>
    /// <exception cref="InvalidOperationException">The VM cannot be reset (<see cref="WhyNot"/>); nothing is released.</exception>
    public static async Task<AssembledMachine> ReassembleAsync(
        VirtualMachineConfiguration config, BackendSelection selection, AssembledMachine old, ILogger logger)
    {
        if (WhyNot(config) is { } reason)
        {
            throw new InvalidOperationException($"The VM '{config.Name}' cannot be started again: {reason}.");
        }

        await old.Resources.DisposeAsync().ConfigureAwait(false);
        return MachineAssembler.Assemble(config, selection, new DeviceManager(config), logger);
    }
}
