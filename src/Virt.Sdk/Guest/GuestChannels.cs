using Virt.Devices.Virtio;

namespace Virt;

/// <summary>The ways into a running guest besides its devices' own: the vsock device, the guest agent, the console's lines.</summary>
internal sealed class GuestChannels
{
    public VirtioVsockDevice? Vsock { get; private init; }

    public GuestAgent? Agent { get; private init; }

    public ConsoleLineMonitor? Console { get; private init; }

    /// <summary>Finds the vsock device among <paramref name="transports"/> and starts the agent's host side when configured.</summary>
    public static GuestChannels Create(VirtualMachineConfiguration config, IReadOnlyList<VirtioMmioTransport> transports, ConsoleLineMonitor? console, MachineResources resources)
    {
        var vsock = transports.Select(t => t.Device).OfType<VirtioVsockDevice>().FirstOrDefault();
        GuestAgent? agent = null;
        if (vsock is not null && config.GuestAgentPort is { } port)
        {
            agent = new GuestAgent(vsock, port);
            resources.Add(agent);
        }

        return new GuestChannels { Vsock = vsock, Agent = agent, Console = console };
    }

    /// <summary>The serial console's output stream, passing through a line monitor.</summary>
    public static ConsoleLineMonitor? MonitorConsole(VirtualMachineConfiguration config) =>
        config.HasSerialConsole ? new ConsoleLineMonitor(config.SerialOutput, config.SerialWriter) : null;
}
