using Microsoft.Extensions.Logging;
using Virt.Storage;

namespace Virt.Orleans;

/// <summary>The parts a VM grain's machine gets on a silo, shared by builds, restores and migrations so they match.</summary>
internal static class MachineParts
{
    public static BackendKind ToKind(VirtualMachineBackend backend) => backend switch
    {
        VirtualMachineBackend.Kvm => BackendKind.Kvm,
        VirtualMachineBackend.Interpreter => BackendKind.Interpreter,
        VirtualMachineBackend.Whp => BackendKind.Whp,
        _ => BackendKind.Auto,
    };

    /// <summary>What a restore or a received migration adds to the saved machine: the backend the spec asks for, then the host's parts.</summary>
    public static VirtualMachineBuilder Restore(VirtualMachineSpec spec, VirtualMachineBuilder builder, VirtualMachineGrainOptions options, ILoggerFactory loggerFactory, Stream serial, GrainDiskSet disks)
    {
        builder = builder.WithLogging(loggerFactory);
        if (spec.Backend != VirtualMachineBackend.Auto)
        {
            builder = builder.WithBackend(ToKind(spec.Backend));
        }

        return Host(spec, builder, options, serial, disks);
    }

    /// <summary>The parts that live on the host, in the order a restore expects them: serial output, disks, then the silo's own.</summary>
    public static VirtualMachineBuilder Host(VirtualMachineSpec spec, VirtualMachineBuilder builder, VirtualMachineGrainOptions options, Stream serial, GrainDiskSet disks)
    {
        if (spec.SerialConsole)
        {
            builder = builder.WithSerialConsole(serial);
        }

        // The spec's disks, each behind its snapshot layer (see GrainDisk), one request queue per vCPU.
        foreach (var disk in disks.Disks)
        {
            builder = builder.WithVirtioDevice("virtio-blk", context =>
            {
                context.DisposeWithMachine(disk);
                return new VirtioBlockDevice(disk, new VirtioBlockOptions { QueueCount = Math.Clamp(context.VcpuCount, 1, VirtioBlockDevice.MaxQueueCount) });
            });
        }

        return options.ConfigureMachine?.Invoke(spec, builder) ?? builder;
    }
}
