using Microsoft.Extensions.Logging;
using Virt.Cpu;
using Virt.Devices;
using Virt.Memory;

namespace Virt;

/// <summary>
/// A machine <see cref="MachineAssembler"/> created and wired, ready to run: what a <see cref="VirtualMachine"/>
/// runs and controls. It changes nothing here; it only drives the vCPUs and releases <see cref="Resources"/>.
/// </summary>
internal sealed class AssembledMachine
{
    /// <summary>Guest RAM, with the images, boot tables and kernel loaded.</summary>
    public required GuestMemory Memory { get; init; }

    /// <summary>The backend's partition, with the memory mapped.</summary>
    public required IPartition Partition { get; init; }

    /// <summary>The vCPUs, in index order, in their start state.</summary>
    public required IVirtualCpu[] Vcpus { get; init; }

    /// <summary>The port-I/O bus with every device registered.</summary>
    public required PortIoBus Ports { get; init; }

    /// <summary>The MMIO bus with every device registered.</summary>
    public required MmioBus Mmio { get; init; }

    /// <summary>The serial console, if the VM has one.</summary>
    public Serial16550? Serial { get; init; }

    /// <summary>For a Linux guest, the command line it was given.</summary>
    public string? KernelCommandLine { get; init; }

    /// <summary>The virtio devices, where they were placed.</summary>
    public required IReadOnlyList<VirtioDeviceInfo> VirtioDevices { get; init; }

    /// <summary>The other configured devices, where they were placed.</summary>
    public required IReadOnlyList<DevicePlacement> Devices { get; init; }

    /// <summary>Where the platform devices (debug-exit, i8042 reset, ACPI power-off) send their requests to stop.</summary>
    public required StopRequests StopRequests { get; init; }

    /// <summary>Everything the machine owns, released together.</summary>
    public required MachineResources Resources { get; init; }

    /// <summary>The virtio-mmio transports, in the order their devices were added (quiesced while a snapshot is saved).</summary>
    public required IReadOnlyList<Virt.Devices.Virtio.VirtioMmioTransport> Transports { get; init; }

    /// <summary>The devices that save and restore their own state, in the order a snapshot writes and restores them.</summary>
    public required IReadOnlyList<Snapshots.IPersistentState> PersistentDevices { get; init; }

    /// <summary>The vsock device, the guest agent and the console's lines.</summary>
    public required GuestChannels Guest { get; init; }

    /// <summary>
    /// Brings every virtio device to rest for a snapshot or the last copy of a migration: no request half done, every
    /// completion in its used ring with its interrupt, disk images flushed. Resumes them all if one fails or the wait
    /// is cancelled.
    /// </summary>
    public async Task QuiesceDevicesAsync(CancellationToken cancellationToken)
    {
        try
        {
            await Task.WhenAll(Transports.Select(t => t.QuiesceAsync(cancellationToken))).ConfigureAwait(false);
        }
        catch
        {
            ResumeDevices();
            throw;
        }
    }

    /// <summary>Lets quiesced virtio devices take requests again; those not quiesced are left as they are.</summary>
    public void ResumeDevices()
    {
        foreach (var transport in Transports)
        {
            transport.Resume();
        }
    }
}

/// <summary>
/// Carries stop requests from the platform devices, which are created during assembly, to the
/// <see cref="VirtualMachine"/> that later runs them. Requests made before it connects are dropped (no guest runs then).
/// </summary>
internal sealed class StopRequests
{
    private Action<VirtualMachineExit>? _target;

    /// <summary>Sends every later request to <paramref name="target"/>.</summary>
    public void Connect(Action<VirtualMachineExit> target) => Volatile.Write(ref _target, target);

    /// <summary>Asks the VM to stop with <paramref name="exit"/>. Thread-safe.</summary>
    public void Request(VirtualMachineExit exit) => Volatile.Read(ref _target)?.Invoke(exit);
}

/// <summary>
/// What a machine owns: guest memory, the partition, the vCPUs and the resources its devices asked the VM to
/// release with it. Released in the reverse order of creation, once, whether assembly failed part-way or the VM is disposed.
/// </summary>
internal sealed partial class MachineResources(ILogger logger, string machineName) : IAsyncDisposable
{
    private readonly List<object> _owned = [];

    /// <summary>Takes ownership of <paramref name="resource"/>.</summary>
    public void Add(IDisposable resource) => _owned.Add(resource);

    /// <summary>Takes ownership of <paramref name="resource"/>.</summary>
    public void Add(IAsyncDisposable resource) => _owned.Add(resource);

    /// <summary>Releases everything, the most recently added first. A resource that fails to release is logged and the rest are still released.</summary>
    public async ValueTask DisposeAsync()
    {
        for (int i = _owned.Count - 1; i >= 0; i--)
        {
            try
            {
                switch (_owned[i])
                {
                    case IAsyncDisposable a:
                        await a.DisposeAsync().ConfigureAwait(false);
                        break;
                    case IDisposable d:
                        d.Dispose();
                        break;
                }
            }
            catch (Exception e) when (e is IOException or ObjectDisposedException or InvalidOperationException)
            {
                LogDisposeFailed(logger, e, machineName);
            }
        }

        _owned.Clear();
    }

    [LoggerMessage(EventId = VirtualMachineDiagnostics.DeviceReleaseFailed, Level = LogLevel.Warning, Message = "VM {Name}: releasing a device resource failed")]
    private static partial void LogDisposeFailed(ILogger logger, Exception exception, string name);
}
