using Microsoft.Extensions.Logging;

namespace Virt;

/// <summary>
/// The event ids of Virt.Sdk's log messages. They are stable across versions (filter and alert on them); a new message
/// takes a new number, a removed one's number is not reused. Virt.Sdk uses 1000-1099, virtio devices 4000-4099
/// (Virt.Devices), Virt.Orleans 1-99. See docs/observability.md.
/// </summary>
internal static partial class VirtLogEvents
{
    /// <summary>A VM was built (Information).</summary>
    public const int Created = 1000;

    /// <summary>A VM changed state (Debug).</summary>
    public const int StateChanged = 1001;

    /// <summary>A VM stopped normally: power-off, reset, debug exit, halt, cancellation, a host stop, its instruction budget (Information).</summary>
    public const int Stopped = 1002;

    /// <summary>A VM stopped because its guest faulted or triple-faulted (Warning: the guest's problem, not the host's).</summary>
    public const int StoppedByFault = 1003;

    /// <summary>A vCPU thread failed with an exception (Error).</summary>
    public const int VcpuFailed = 1004;

    /// <summary>A vCPU halted with interrupts off (Debug).</summary>
    public const int VcpuHalted = 1005;

    /// <summary>Releasing a device resource failed on disposal (Warning).</summary>
    public const int DeviceReleaseFailed = 1006;

    /// <summary>A VM stopped because a backend call failed on the host (Error).</summary>
    public const int StoppedByHostError = 1007;

    /// <summary>
    /// The level a stop is logged at: Information for the ends a host asks for or expects, Warning for a guest's own
    /// fault (a hostile or broken guest is not a host failure), Error when the host side failed.
    /// </summary>
    public static LogLevel StopLevel(StopReason reason) => reason switch
    {
        StopReason.GuestFault or StopReason.Shutdown => LogLevel.Warning,
        StopReason.HostError => LogLevel.Error,
        _ => LogLevel.Information,
    };

    /// <summary>Logs a VM's stop at the level <see cref="StopLevel"/> gives, each level under its own event id.</summary>
    public static void LogStop(ILogger logger, string name, VirtualMachineExit exit)
    {
        switch (StopLevel(exit.Reason))
        {
            case LogLevel.Warning:
                LogStoppedByFault(logger, name, exit.Reason, exit.Description);
                break;
            case LogLevel.Error:
                LogStoppedByHostError(logger, exit.Exception, name, exit.Description);
                break;
            default:
                LogStopped(logger, name, exit.Description);
                break;
        }
    }

    [LoggerMessage(EventId = Stopped, Level = LogLevel.Information, Message = "VM {Name} stopped: {Description}")]
    private static partial void LogStopped(ILogger logger, string name, string description);

    [LoggerMessage(EventId = StoppedByFault, Level = LogLevel.Warning, Message = "VM {Name} stopped by {Reason}: {Description}")]
    private static partial void LogStoppedByFault(ILogger logger, string name, StopReason reason, string description);

    [LoggerMessage(EventId = StoppedByHostError, Level = LogLevel.Error, Message = "VM {Name} stopped by a host error: {Description}")]
    private static partial void LogStoppedByHostError(ILogger logger, Exception? exception, string name, string description);

    [LoggerMessage(EventId = Created, Level = LogLevel.Information, Message = "VM {Name} created on {Backend} ({Reason}), {MemoryMiB} MiB, {Vcpus} vCPU(s)")]
    public static partial void LogCreated(ILogger logger, string name, string backend, string reason, ulong memoryMiB, int vcpus);

    [LoggerMessage(EventId = StateChanged, Level = LogLevel.Debug, Message = "VM {Name}: {Old} -> {New}")]
    public static partial void LogStateChanged(ILogger logger, string name, VirtualMachineState old, VirtualMachineState @new);

    [LoggerMessage(EventId = VcpuFailed, Level = LogLevel.Error, Message = "VM {Name}: vCPU {Index} failed")]
    public static partial void LogVcpuFailed(ILogger logger, Exception exception, string name, int index);

    [LoggerMessage(EventId = VcpuHalted, Level = LogLevel.Debug, Message = "VM {Name}: vCPU {Index} halted")]
    public static partial void LogVcpuHalted(ILogger logger, string name, int index);
}
