namespace Virt;

/// <summary>
/// The names under which Virt.Sdk publishes metrics (<see cref="System.Diagnostics.Metrics.Meter"/>) and traces
/// (<see cref="System.Diagnostics.ActivitySource"/>). Subscribe with OpenTelemetry's <c>AddMeter(MeterName)</c> and
/// <c>AddSource(ActivitySourceName)</c>, or with a <see cref="System.Diagnostics.Metrics.MeterListener"/>. The
/// instruments are listed in docs/observability.md.
/// </summary>
public static class VirtualizationTelemetry
{
    /// <summary>The meter of VM exits, stops and retired instructions: <c>Virt.Sdk</c>.</summary>
    public const string MeterName = "Virt.Sdk";

    /// <summary>The activity source of VM runs (one activity from start to stop): <c>Virt.Sdk</c>.</summary>
    public const string ActivitySourceName = "Virt.Sdk";
}
