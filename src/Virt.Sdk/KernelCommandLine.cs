using Virt.Boot;

namespace Virt;

/// <summary>
/// The command line a booted kernel gets. A Linux kernel (bzImage or PVH ELF) gets the caller's line followed by what
/// the machine needs Linux to know: <c>console=ttyS0</c> with a serial console, the guest agent's port, the virtio-mmio devices (<see cref="VirtioDiscovery.CommandLine"/>) and the shared-folder mounts, each unless
/// the caller already gave it. Any other kernel (Multiboot) gets the caller's line exactly as given: those parameters
/// are Linux's, and another kernel would take them for its own.
/// </summary>
internal static class KernelCommandLine
{
    /// <summary>The command line for <paramref name="config"/>'s kernel, whose format is <paramref name="format"/>.</summary>
    public static string Compose(VirtualMachineConfiguration config, KernelFormat format, DeviceManager devices)
    {
        if (format == KernelFormat.Multiboot)
        {
            return config.KernelCommandLine ?? string.Empty;
        }

        string? given = config.KernelCommandLine;
        var parts = new List<string>();
        if (!string.IsNullOrWhiteSpace(given))
        {
            parts.Add(given.Trim());
        }

        if (config.HasSerialConsole && given?.Contains("console=", StringComparison.Ordinal) != true)
        {
            parts.Add("console=ttyS0");
        }

        if (config.GuestAgentPort is { } agentPort && given?.Contains("virt.agent=", StringComparison.Ordinal) != true)
        {
            parts.Add($"virt.agent={agentPort}");
        }

        // No pci=off: the machine's PCI host bridge (configuration mechanism #1, nothing behind it) answers the
        // kernel's probe, and with pci=off the kernel would skip that probe and report "PCI: Fatal: No config space
        // access function found" instead.
        if (config.VirtioDiscovery == VirtioDiscovery.CommandLine)
        {
            parts.AddRange(devices.KernelCommandLineEntries);
        }

        // Shared folders the guest kit's /init mounts (virt.mount=TAG:DIR[:ro]).
        parts.AddRange(config.SharedFolders.Select(s => s.KernelParameter).OfType<string>());
        return string.Join(' ', parts);
    }
}
