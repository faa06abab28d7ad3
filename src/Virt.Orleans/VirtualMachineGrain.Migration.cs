using System.Diagnostics;
using System.Net.Sockets;
using System.Text;
using Microsoft.Extensions.Logging;
using Orleans;
using Orleans.Runtime;

namespace Virt.Orleans;

/// <summary>The grain's live moves: send the machine to the target silo's migration listener, then hand the grain over.</summary>
internal sealed partial class VirtualMachineGrain
{
    /// <summary>How long a handed-off grain may stay here before it takes its machine back (the grain did not move).</summary>
    private static readonly TimeSpan HandoffTimeout = TimeSpan.FromSeconds(10);

    private static readonly TimeSpan AcknowledgeTimeout = TimeSpan.FromMinutes(1);

    /// <summary>Set once the target holds the machine: the grain must now move there, and its paused copy here is dropped.</summary>
    private Handoff? _handoff;

    private sealed record Handoff(SiloAddress Target, long At);

    /// <summary>When the machine claimed by this activation was resumed by the migration listener (a Stopwatch timestamp), if it was.</summary>
    private long? _resumedOnArrivalAt;

    /// <summary>
    /// Streams the VM to <paramref name="target"/>: memory while the guest runs, then the last pages and the state with
    /// it paused. On success the machine here stays paused and <see cref="_handoff"/> is set; on failure a guest that
    /// was running runs on here and the exception says why.
    /// </summary>
    private async Task SendLiveAsync(VirtualMachine vm, SiloAddress target, CancellationToken cancellationToken)
    {
        var spec = RequireSpec();
        var host = GrainFactory.GetGrain<IVirtualMachineHostInternalGrain>(target.ToParsableString());
        bool wasRunning = vm.State == VirtualMachineState.Running;

        // A guest without disks runs on at the target as soon as it arrives; one with disks waits for its grain there,
        // since its disk layers pass to the target only once this copy has let go of them.
        bool resumeOnArrival = wasRunning && spec.Disks.Length == 0 && _options.ResumeOnArrival;
        var ticket = await host.PrepareIncomingAsync(Name, spec, resumeOnArrival, cancellationToken);
        using var client = new TcpClient { NoDelay = true };
        await client.ConnectAsync(ticket.Host, ticket.Port, cancellationToken);
        var stream = client.GetStream();
        await using (stream)
        {
            await stream.WriteAsync(ticket.Token, cancellationToken);
            long started = Stopwatch.GetTimestamp();
            MigrationReport report;
            try
            {
                report = await vm.MigrateAsync(stream, _options.Migration, cancellationToken);
                string? refused = await ReadAcknowledgementAsync(stream, cancellationToken);
                if (refused is not null)
                {
                    throw new InvalidOperationException($"The silo {target} could not take the VM '{Name}': {refused}");
                }
            }
            catch (Exception) when (wasRunning && vm.State == VirtualMachineState.Paused)
            {
                await vm.ResumeAsync(CancellationToken.None);
                throw;
            }

            _handoff = new Handoff(target, Stopwatch.GetTimestamp());
            StopRunningClock();

            // The target attaches the disks' layers when its activation claims the machine; this paused copy lets go of them.
            await _disks.DetachAsync();
            Record.MovePausedAt = started + (long)((report.Duration - report.Downtime).TotalSeconds * Stopwatch.Frequency);
            Record.MoveHost = Environment.MachineName;
            Record.LastMoveLive = true;
            Record.LastMigrationRounds = report.Rounds;
            Record.LastMigrationBytes = report.BytesSent;
            Record.LastMigrationSourcePause = report.Downtime;
            await WriteRecordAsync(cancellationToken);
        }
    }

    /// <summary>Null when the target acknowledged the VM; otherwise its reason.</summary>
    private static async Task<string?> ReadAcknowledgementAsync(NetworkStream stream, CancellationToken cancellationToken)
    {
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        deadline.CancelAfter(AcknowledgeTimeout);
        byte[] buffer = new byte[4096];
        int read = await stream.ReadAsync(buffer.AsMemory(0, 1), deadline.Token);
        if (read == 1 && buffer[0] == 1)
        {
            return null;
        }

        if (read == 0)
        {
            return "it closed the connection without an answer";
        }

        int length = 0;
        while (length < buffer.Length)
        {
            int n = await stream.ReadAsync(buffer.AsMemory(length), deadline.Token);
            if (n == 0)
            {
                break;
            }

            length += n;
        }

        return Encoding.UTF8.GetString(buffer, 0, length);
    }

    /// <summary>A grain handed off but still here long after (the activation did not move): takes its machine back and runs on.</summary>
    private async Task ReclaimAbandonedHandoffAsync(CancellationToken cancellationToken)
    {
        if (_handoff is not { } handoff || Stopwatch.GetElapsedTime(handoff.At) < HandoffTimeout)
        {
            return;
        }

        _handoff = null;
        Record.MovePausedAt = 0;
        try
        {
            await GrainFactory.GetGrain<IVirtualMachineHostInternalGrain>(handoff.Target.ToParsableString()).DiscardIncomingAsync(Name, cancellationToken);
        }
        catch (Exception ex) when (ex is not OperationCanceledException)
        {
            LogDiscardFailed(_logger, ex, Name, handoff.Target);
        }

        await _disks.AttachAsync(Record.DiskGeneration + 1);
        if (Record.State == VirtualMachineGrainState.Running && _vm is { State: VirtualMachineState.Paused })
        {
            await RunAsync(cancellationToken);
        }

        LogHandoffReclaimed(_logger, Name, handoff.Target);
    }

    /// <summary>After an activation that follows a move: records the downtime and counts the move.</summary>
    private async Task EndMoveAsync(CancellationToken cancellationToken)
    {
        if (Record.MovePausedAt == 0)
        {
            return;
        }

        long resumed = _resumedOnArrivalAt ?? Stopwatch.GetTimestamp();
        Record.LastMoveDowntime = Record.MoveHost == Environment.MachineName ? Stopwatch.GetElapsedTime(Record.MovePausedAt, resumed) : null;
        Record.Moves++;
        Record.MovePausedAt = 0;
        await WriteRecordAsync(cancellationToken);
    }

    [LoggerMessage(7, LogLevel.Warning, "VM {Name}: the live move to {Target} could not start; moving by save and restore")]
    private static partial void LogLiveMoveFellBack(ILogger logger, Exception exception, string name, SiloAddress target);

    [LoggerMessage(8, LogLevel.Warning, "VM {Name}: the VM received by {Target} could not be discarded")]
    private static partial void LogDiscardFailed(ILogger logger, Exception exception, string name, SiloAddress target);

    [LoggerMessage(9, LogLevel.Warning, "VM {Name} did not move to {Target} after its live migration; it runs on here")]
    private static partial void LogHandoffReclaimed(ILogger logger, string name, SiloAddress target);
}
