using Microsoft.Extensions.Logging;

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
    public static VirtualMachineBuilder Restore(VirtualMachineSpec spec, VirtualMachineBuilder builder, VirtualMachineGrainOptions options, ILoggerFactory loggerFactory, Stream serial)
    {
        builder = builder.WithLogging(loggerFactory);
        if (spec.Backend != VirtualMachineBackend.Auto)
        {
            builder = builder.WithBackend(ToKind(spec.Backend));
        }

        return Host(spec, builder, options, serial);
    }

    /// <summary>The parts that live on the host, in the order a restore expects them: serial output, disks, then the silo's own.</summary>
    public static VirtualMachineBuilder Host(VirtualMachineSpec spec, VirtualMachineBuilder builder, VirtualMachineGrainOptions options, Stream serial)
    {
        if (spec.SerialConsole)
        {
            builder = builder.WithSerialConsole(serial);
        }

        foreach (string disk in spec.Disks)
        {
            builder = builder.WithVirtioBlock(disk);
        }

        return options.ConfigureMachine?.Invoke(spec, builder) ?? builder;
    }
}
