using System.Diagnostics;
using System.Diagnostics.Metrics;
using System.Runtime.CompilerServices;
using Microsoft.Extensions.Logging;
using Virt.Boot;
using Virt.Cpu;

namespace Virt;

/// <summary>
/// A VM's logs, metrics and traces in one place (so that VirtualMachine itself stays small). The event ids of Virt.Sdk's log messages. They are stable across versions (filter and alert on them); a new message
/// takes a new number, a removed one's number is not reused. Virt.Sdk uses 1000-1099, virtio devices 4000-4099
/// (Virt.Devices), Virt.Orleans 1-99. See docs/observability.md.
/// </summary>
internal static partial class VirtualMachineDiagnostics
{
    private static readonly Meter s_meter = new(VirtualizationTelemetry.MeterName, typeof(VirtualMachineDiagnostics).Assembly.GetName().Version?.ToString());
    private static readonly ActivitySource s_activities = new(VirtualizationTelemetry.ActivitySourceName, typeof(VirtualMachineDiagnostics).Assembly.GetName().Version?.ToString());
    private static readonly Counter<long> s_exits = s_meter.CreateCounter<long>("virt.vm.exits", "{exit}", "vCPU exits handed to the VM's run loop, by reason (port_io, mmio, interrupted, halt, ...).");
    private static readonly Counter<long> s_stops = s_meter.CreateCounter<long>("virt.vm.stops", "{stop}", "VMs that stopped, by stop reason.");
    private static readonly Counter<long> s_instructions = s_meter.CreateCounter<long>("virt.vm.instructions", "{instruction}", "Instructions retired by VMs on backends that count them (the interpreter), added when a VM stops.");
    private static readonly string[] s_exitReasons = [.. Enum.GetValues<VcpuExitReason>().Select(r => ToSnakeCase(r.ToString()))];
    private static readonly ConditionalWeakTable<VirtualMachine, Activity> s_runs = [];

    /// <summary>Counts one vCPU exit; nearly free when nothing listens.</summary>
    public static void CountExit(VcpuExitReason reason)
    {
        if (s_exits.Enabled)
        {
            int index = (int)reason;
            string name = (uint)index < (uint)s_exitReasons.Length ? s_exitReasons[index] : "unknown";
            s_exits.Add(1, new KeyValuePair<string, object?>("virt.exit.reason", name));
        }
    }

    /// <summary>Starts the VM's run activity (a child of the caller's current activity) when someone listens.</summary>
    public static void RecordStart(VirtualMachine vm, string name, string backend, int vcpus)
    {
        var activity = s_activities.StartActivity("virt.vm.run", ActivityKind.Internal);
        if (activity is null)
        {
            return;
        }

        activity.SetTag("virt.vm.name", name);
        activity.SetTag("virt.backend", backend);
        activity.SetTag("virt.vm.vcpus", vcpus);
        s_runs.AddOrUpdate(vm, activity);
    }

    /// <summary>Records a stop: the stop counter, the retired instructions, and the end of the run activity.</summary>
    public static void RecordStop(VirtualMachine vm, IReadOnlyList<IVirtualCpu> vcpus, VirtualMachineExit exit)
    {
        string reason = ToSnakeCase(exit.Reason.ToString());
        s_stops.Add(1, new KeyValuePair<string, object?>("virt.stop.reason", reason));
        if (s_instructions.Enabled)
        {
            long retired = 0;
            foreach (var vcpu in vcpus)
            {
                retired += vcpu is IInstructionCounting counting ? counting.InstructionsRetired : 0;
            }

            if (retired > 0)
            {
                s_instructions.Add(retired);
            }
        }

        if (s_runs.TryGetValue(vm, out var activity))
        {
            s_runs.Remove(vm);
            activity.SetTag("virt.stop.reason", reason);
            activity.SetTag("virt.stop.description", exit.Description);
            if (StopLevel(exit.Reason) != LogLevel.Information)
            {
                activity.SetStatus(ActivityStatusCode.Error, exit.Description);
            }

            activity.Stop();
        }
    }

    private static string ToSnakeCase(string name)
    {
        var text = new System.Text.StringBuilder(name.Length + 4);
        for (int i = 0; i < name.Length; i++)
        {
            if (char.IsUpper(name[i]) && i > 0)
            {
                text.Append('_');
            }

            text.Append(char.ToLowerInvariant(name[i]));
        }

        return text.ToString();
    }

    /// <summary>A VM was built (Information).</summary>
    public const int Created = 1000;

    /// <summary>A Linux kernel was loaded: how, and where it starts (Debug).</summary>
    public const int KernelLoaded = 1009;

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

    /// <summary>A stopped VM was reset cold to its initial state (Information).</summary>
    public const int Reset = 1008;

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

    [LoggerMessage(EventId = KernelLoaded, Level = LogLevel.Debug, Message = "VM {Name}: kernel loaded {How}, entered in {Mode} at 0x{Entry:x}")]
    public static partial void LogKernelLoaded(ILogger logger, string name, StartMode mode, ulong entry, string how);

    [LoggerMessage(EventId = StateChanged, Level = LogLevel.Debug, Message = "VM {Name}: {Old} -> {New}")]
    public static partial void LogStateChanged(ILogger logger, string name, VirtualMachineState old, VirtualMachineState @new);

    [LoggerMessage(EventId = Reset, Level = LogLevel.Information, Message = "VM {Name}: reset cold to its initial state")]
    public static partial void LogReset(ILogger logger, string name);

    [LoggerMessage(EventId = VcpuFailed, Level = LogLevel.Error, Message = "VM {Name}: vCPU {Index} failed")]
    public static partial void LogVcpuFailed(ILogger logger, Exception exception, string name, int index);

    [LoggerMessage(EventId = VcpuHalted, Level = LogLevel.Debug, Message = "VM {Name}: vCPU {Index} halted")]
    public static partial void LogVcpuHalted(ILogger logger, string name, int index);
}
