using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Orleans;
using Orleans.Runtime;

namespace Virt.Orleans;

/// <summary>
/// Publishes the silo's capacity to the directory grain when it changes and at every interval, and keeps the
/// cluster's reports that come back for this silo's placement decisions. Runs while the silo is active.
/// </summary>
internal sealed partial class CapacityPublisher(
    LocalVirtualMachines local,
    ClusterCapacityView view,
    IGrainFactory grains,
    IOptions<VirtualMachineGrainOptions> options,
    ILogger<CapacityPublisher> logger) : ILifecycleParticipant<ISiloLifecycle>, IDisposable
{
    private CancellationTokenSource? _stop;
    private Task? _loop;

    public void Participate(ISiloLifecycle lifecycle) =>
        lifecycle.Subscribe(nameof(CapacityPublisher), ServiceLifecycleStage.Active, StartAsync, StopAsync);

    private Task StartAsync(CancellationToken cancellationToken)
    {
        _stop = new CancellationTokenSource();
        _loop = Task.Run(() => RunAsync(_stop.Token), CancellationToken.None);
        return Task.CompletedTask;
    }

    private async Task StopAsync(CancellationToken cancellationToken)
    {
        if (_stop is not { } stop || _loop is not { } loop)
        {
            return;
        }

        _loop = null;
        await stop.CancelAsync().ConfigureAwait(false);
        try
        {
            await loop.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
        }
    }

    public void Dispose()
    {
        _stop?.Cancel();
        _stop?.Dispose();
        _stop = null;
    }

    private async Task RunAsync(CancellationToken stop)
    {
        var directory = grains.GetGrain<ICapacityDirectoryGrain>(0);
        var interval = options.Value.CapacityPublishInterval;
        while (!stop.IsCancellationRequested)
        {
            try
            {
                view.Apply(await directory.PublishAsync(local.Report(), view.Cursor, stop).ConfigureAwait(false));
            }
            catch (Exception ex) when (!stop.IsCancellationRequested)
            {
                LogPublishFailed(logger, ex);
            }

            try
            {
                await local.WaitForChangeAsync(interval, stop).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                return;
            }
        }
    }

    [LoggerMessage(20, LogLevel.Debug, "The silo's capacity could not be published; it is tried again at the next change or interval")]
    private static partial void LogPublishFailed(ILogger logger, Exception exception);
}
