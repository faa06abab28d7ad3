using System.Diagnostics.Metrics;

namespace Virt.Storage;

/// <summary>
/// The name under which Virt.Storage publishes metrics: virtio-blk requests by type and status, and bytes moved by
/// direction. See docs/observability.md.
/// </summary>
public static class StorageTelemetry
{
    /// <summary>The meter: <c>Virt.Storage</c>.</summary>
    public const string MeterName = "Virt.Storage";

    private static readonly Meter s_meter = new(MeterName, typeof(StorageTelemetry).Assembly.GetName().Version?.ToString());
    private static readonly Counter<long> s_requests = s_meter.CreateCounter<long>("virt.block.requests", "{request}", "virtio-blk requests served, by type (read, write, flush, get_id, discard, write_zeroes, unsupported) and status (ok, error, unsupported).");
    private static readonly Counter<long> s_bytes = s_meter.CreateCounter<long>("virt.block.bytes", "By", "Bytes read from and written to disk images by virtio-blk, by direction (read, write).");

    /// <summary>Records one answered request; nearly free when nothing listens.</summary>
    internal static void Request(string type, string status, long readBytes, long writtenBytes)
    {
        if (s_requests.Enabled)
        {
            s_requests.Add(1, new KeyValuePair<string, object?>("virt.block.request", type), new KeyValuePair<string, object?>("virt.block.status", status));
        }

        if (s_bytes.Enabled)
        {
            if (readBytes > 0)
            {
                s_bytes.Add(readBytes, new KeyValuePair<string, object?>("virt.block.direction", "read"));
            }

            if (writtenBytes > 0)
            {
                s_bytes.Add(writtenBytes, new KeyValuePair<string, object?>("virt.block.direction", "write"));
            }
        }
    }
}
