using System.Globalization;

namespace Virt.Cli;

/// <summary>Host facts that no backend reports: network administration rights and the TUN device.</summary>
internal static class HostCapabilities
{
    private const int CapNetAdmin = 12; // linux/capability.h

    /// <summary>Whether this process holds CAP_NET_ADMIN (needed to create TAP interfaces), from /proc/self/status.</summary>
    public static bool? HasNetAdmin()
    {
        if (!OperatingSystem.IsLinux())
        {
            return null;
        }

        try
        {
            foreach (string line in File.ReadLines("/proc/self/status"))
            {
                if (line.StartsWith("CapEff:", StringComparison.Ordinal)
                    && ulong.TryParse(line.AsSpan(7).Trim(), NumberStyles.HexNumber, CultureInfo.InvariantCulture, out ulong mask))
                {
                    return (mask & (1UL << CapNetAdmin)) != 0;
                }
            }
        }
        catch (IOException)
        {
        }

        return null;
    }

    /// <summary>Whether /dev/net/tun can be opened for reading and writing, and if not, why.</summary>
    public static (bool Usable, string Detail) TunDevice()
    {
        const string path = "/dev/net/tun";
        if (!File.Exists(path))
        {
            return (false, $"{path} does not exist (load the tun module: modprobe tun)");
        }

        try
        {
            using var handle = File.OpenHandle(path, FileMode.Open, FileAccess.ReadWrite);
            return (true, $"{path} opens for reading and writing");
        }
        catch (UnauthorizedAccessException)
        {
            return (false, $"{path} exists but this user may not open it");
        }
        catch (IOException e)
        {
            return (false, $"{path} could not be opened: {e.Message}");
        }
    }
}
