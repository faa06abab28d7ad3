using System.Diagnostics;
using System.Diagnostics.Metrics;

namespace Virt.Sandbox;

/// <summary>
/// The names under which Virt.Sandbox publishes metrics and traces: a counter of runs by outcome, a counter of limits
/// hit, a histogram of run durations, and one activity per <see cref="Sandbox.RunAsync"/>. See docs/observability.md.
/// </summary>
public static class SandboxTelemetry
{
    /// <summary>The meter: <c>Virt.Sandbox</c>.</summary>
    public const string MeterName = "Virt.Sandbox";

    /// <summary>The activity source: <c>Virt.Sandbox</c>.</summary>
    public const string ActivitySourceName = "Virt.Sandbox";

    private static readonly Meter s_meter = new(MeterName, typeof(SandboxTelemetry).Assembly.GetName().Version?.ToString());
    private static readonly ActivitySource s_activities = new(ActivitySourceName, typeof(SandboxTelemetry).Assembly.GetName().Version?.ToString());
    private static readonly Counter<long> s_runs = s_meter.CreateCounter<long>("virt.sandbox.runs", "{run}", "Sandbox runs, by outcome (exited, signaled, time_limit_exceeded, guest_fault, ...).");
    private static readonly Counter<long> s_limits = s_meter.CreateCounter<long>("virt.sandbox.limits_hit", "{run}", "Sandbox runs that a limit or the policy ended, by limit (time, memory, output, syscalls, policy).");
    private static readonly Histogram<double> s_duration = s_meter.CreateHistogram<double>("virt.sandbox.run.duration", "s", "Wall time of sandbox runs.");

    /// <summary>Starts a run's activity (a child of the caller's current activity) when someone listens.</summary>
    internal static Activity? StartRun(string? backend)
    {
        // RunAsync is not an async method, so the new activity would stay current in the caller's context after it
        // returns and parent the caller's next run; the caller's current activity is put back.
        var previous = Activity.Current;
        var activity = s_activities.StartActivity("virt.sandbox.run", ActivityKind.Internal);
        activity?.SetTag("virt.backend", backend);
        Activity.Current = previous;
        return activity;
    }

    /// <summary>Records a finished run and ends its activity.</summary>
    internal static void Finished(Activity? activity, SandboxResult result)
    {
        string outcome = Outcome(result.Status);
        var outcomeTag = new KeyValuePair<string, object?>("virt.sandbox.outcome", outcome);
        s_runs.Add(1, outcomeTag);
        s_duration.Record(result.Usage.WallTime.TotalSeconds, outcomeTag);
        if (Limit(result.Status) is { } limit)
        {
            s_limits.Add(1, new KeyValuePair<string, object?>("virt.sandbox.limit", limit));
        }

        if (activity is not null)
        {
            activity.SetTag("virt.sandbox.outcome", outcome);
            if (result.Status == SandboxStatus.Exited)
            {
                activity.SetTag("virt.sandbox.exit_code", result.ExitCode);
            }

            activity.SetTag("virt.sandbox.system_calls", result.Usage.SystemCalls);
            if (result.Status is SandboxStatus.GuestFault or SandboxStatus.BackendFailure)
            {
                activity.SetStatus(ActivityStatusCode.Error, result.Message ?? result.Fault?.ToString());
            }

            activity.Stop();
        }
    }

    /// <summary>Ends a run's activity whose call threw.</summary>
    internal static void Failed(Activity? activity, Exception exception)
    {
        if (activity is not null)
        {
            activity.SetStatus(ActivityStatusCode.Error, exception.Message);
            activity.Stop();
        }
    }

    private static string Outcome(SandboxStatus status) => status switch
    {
        SandboxStatus.Exited => "exited",
        SandboxStatus.Signaled => "signaled",
        SandboxStatus.TimeLimitExceeded => "time_limit_exceeded",
        SandboxStatus.MemoryLimitExceeded => "memory_limit_exceeded",
        SandboxStatus.OutputLimitExceeded => "output_limit_exceeded",
        SandboxStatus.SyscallLimitExceeded => "syscall_limit_exceeded",
        SandboxStatus.ForbiddenOperation => "forbidden_operation",
        SandboxStatus.GuestFault => "guest_fault",
        SandboxStatus.BackendFailure => "backend_failure",
        SandboxStatus.Cancelled => "cancelled",
        _ => "unknown",
    };

    private static string? Limit(SandboxStatus status) => status switch
    {
        SandboxStatus.TimeLimitExceeded => "time",
        SandboxStatus.MemoryLimitExceeded => "memory",
        SandboxStatus.OutputLimitExceeded => "output",
        SandboxStatus.SyscallLimitExceeded => "syscalls",
        SandboxStatus.ForbiddenOperation => "policy",
        _ => null,
    };
}
