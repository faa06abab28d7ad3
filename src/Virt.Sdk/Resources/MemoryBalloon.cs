using Virt.Devices.Virtio;

namespace Virt;

/// <summary>
/// A VM's memory balloon (added with <see cref="VirtualMachineBuilder.WithBalloon"/>): ask the guest to give memory back
/// to the host, or let it take memory again. The guest's driver (Linux: <c>virtio_balloon</c>) does the work at its
/// own pace; pages it gives up are returned to the host at once, so the VM's resident memory shrinks.
/// </summary>
public sealed class MemoryBalloon
{
    private readonly VirtioBalloonDevice _device;

    internal MemoryBalloon(VirtioBalloonDevice device) => _device = device;

    /// <summary>The memory the host asks the balloon to hold, in bytes.</summary>
    public ulong TargetBytes => (ulong)_device.TargetPages * VirtioBalloonDevice.BalloonPageSize;

    /// <summary>The memory the guest says the balloon holds, in bytes.</summary>
    public ulong ActualBytes => (ulong)_device.ActualPages * VirtioBalloonDevice.BalloonPageSize;

    /// <summary>Bytes returned to the host so far: pages put in the balloon plus free memory the guest reported.</summary>
    public ulong ReleasedBytes => ((ulong)_device.ReleasedPages * VirtioBalloonDevice.BalloonPageSize) + (ulong)_device.ReportedBytes;

    /// <summary>The device, for its counters.</summary>
    public VirtioBalloonDevice Device => _device;

    /// <summary>Sets the balloon's target (rounded down to 4 KiB pages) and returns at once.</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="bytes"/> exceeds the guest's memory.</exception>
    public void SetTarget(ulong bytes) => _device.SetTargetPages(checked((int)(bytes / VirtioBalloonDevice.BalloonPageSize)));

    /// <summary>
    /// Sets the target and waits until the guest reports the balloon at it: with a larger target the guest has given
    /// that much memory back (inflate), with a smaller one it may use it again (deflate).
    /// </summary>
    /// <exception cref="OperationCanceledException">Cancelled first (a guest without a balloon driver never answers).</exception>
    public async Task InflateToAsync(ulong bytes, CancellationToken cancellationToken = default)
    {
        var reached = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        int target = checked((int)(bytes / VirtioBalloonDevice.BalloonPageSize));
        void OnChanged(object? sender, EventArgs e)
        {
            if (_device.ActualPages == _device.TargetPages)
            {
                reached.TrySetResult();
            }
        }

        _device.ActualChanged += OnChanged;
        try
        {
            _device.SetTargetPages(target);
            OnChanged(null, EventArgs.Empty);
            await reached.Task.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            _device.ActualChanged -= OnChanged;
        }
    }

    /// <summary>Asks the guest for its memory statistics (free, total, available memory...).</summary>
    /// <exception cref="InvalidOperationException">The guest's driver is not running or did not accept statistics.</exception>
    public Task<IReadOnlyDictionary<BalloonStatistic, ulong>> GetStatisticsAsync(CancellationToken cancellationToken = default) =>
        _device.RequestStatisticsAsync(cancellationToken);
}
