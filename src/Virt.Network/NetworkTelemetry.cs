using System.Diagnostics.Metrics;

namespace Virt.Network;

/// <summary>
/// The name under which Virt.Network publishes metrics: frames a virtual switch dropped, by reason. See
/// docs/observability.md.
/// </summary>
public static class NetworkTelemetry
{
    /// <summary>The meter: <c>Virt.Network</c>.</summary>
    public const string MeterName = "Virt.Network";

    private static readonly Meter s_meter = new(MeterName, typeof(NetworkTelemetry).Assembly.GetName().Version?.ToString());
    private static readonly Counter<long> s_dropped = s_meter.CreateCounter<long>("virt.network.frames_dropped", "{frame}", "Frames a virtual network dropped, by reason (runt, stopped, receiver_refused).");

    /// <summary>Counts a dropped frame on <paramref name="network"/>.</summary>
    internal static void Dropped(string network, string reason)
    {
        if (s_dropped.Enabled)
        {
            s_dropped.Add(1, new KeyValuePair<string, object?>("virt.network.name", network), new KeyValuePair<string, object?>("virt.network.drop_reason", reason));
        }
    }
}
