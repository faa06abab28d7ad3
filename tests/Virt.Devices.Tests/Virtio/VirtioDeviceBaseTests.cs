using Virt.Devices.Virtio;
using Virt.Testing.Virtio;
using Xunit;

namespace Virt.Devices.Tests.Virtio;

/// <summary>The public device base and worker, through the public API only.</summary>
public sealed class VirtioDeviceBaseTests
{
    [Fact]
    public void Notification_kicks_only_the_worker_of_that_queue()
    {
        var device = new TwoQueueDevice();
        using var rig = Start(device);
        var driver = rig.Driver;
        WaitUntil(() => device.Runs[0] == 1 && device.Runs[1] == 1, "activation should run every worker once");

        driver.Notify(1);
        WaitUntil(() => device.Runs[1] == 2, "the notified queue's worker should run");
        Assert.Equal(1, device.Runs[0]);
    }

    [Fact]
    public void Drain_that_throws_is_contained_and_puts_the_device_into_needs_reset()
    {
        var device = new TwoQueueDevice { ThrowOnQueue = 1 };
        using var rig = Start(device);

        WaitUntil(() => rig.NeedsReset, "the device should need a reset");
        Assert.Contains(rig.Logger.Messages, m => m.Contains("internal error: InvalidOperationException: device bug", StringComparison.Ordinal));
    }

    [Fact]
    public void Reset_forgets_the_context_and_calls_on_reset()
    {
        var device = new TwoQueueDevice();
        using var rig = Start(device);
        var driver = rig.Driver;
        Assert.NotNull(device.CurrentContext);
        int resets = device.Resets;

        driver.WriteRegister(0x70, 0);

        Assert.Null(device.CurrentContext);
        Assert.Equal(resets + 1, device.Resets);
    }

    [Fact]
    public void Worker_added_after_activation_is_refused()
    {
        var device = new TwoQueueDevice();
        using var rig = Start(device);

        Assert.Throws<InvalidOperationException>(() => device.AddWorkerFor(2));
    }

    [Fact]
    public void Second_worker_for_a_queue_is_refused()
    {
        var device = new TwoQueueDevice();
        Assert.Throws<ArgumentException>(() => device.AddWorkerFor(0));
        Assert.Throws<ArgumentOutOfRangeException>(() => device.AddWorkerFor(-1));
    }

    [Fact]
    public void Worker_kicked_while_running_runs_once_more()
    {
        using var running = new ManualResetEventSlim();
        using var release = new ManualResetEventSlim();
        int runs = 0;
        var worker = new VirtqueueWorker(
            () =>
            {
                if (Interlocked.Increment(ref runs) == 1)
                {
                    running.Set();
                    release.Wait(TimeSpan.FromSeconds(10), TestContext.Current.CancellationToken);
                }

                return Task.CompletedTask;
            },
            e => Assert.Fail(e.Message));

        worker.Kick();
        Assert.True(running.Wait(TimeSpan.FromSeconds(10), TestContext.Current.CancellationToken));
        worker.Kick();
        worker.Kick();
        Assert.True(worker.IsBusy);
        release.Set();

        WaitUntil(() => !worker.IsBusy, "the worker should go idle");
        Assert.Equal(2, Volatile.Read(ref runs));
    }

    [Fact]
    public void Worker_survives_a_throwing_drain_and_a_throwing_error_callback()
    {
        int errors = 0;
        int runs = 0;
        var worker = new VirtqueueWorker(
            () => Interlocked.Increment(ref runs) == 1 ? throw new InvalidOperationException("first run fails") : Task.CompletedTask,
            _ =>
            {
                Interlocked.Increment(ref errors);
                throw new InvalidOperationException("so does the callback");
            });

        worker.Kick();
        WaitUntil(() => !worker.IsBusy && Volatile.Read(ref errors) == 1, "the error should be reported");
        worker.Kick();
        WaitUntil(() => Volatile.Read(ref runs) == 2 && !worker.IsBusy, "the worker should still run");
        Assert.Equal(1, Volatile.Read(ref errors));
    }

    [Fact]
    public void Held_worker_runs_no_drain_and_runs_one_after_release_only_when_kicked_or_asked()
    {
        int runs = 0;
        var worker = new VirtqueueWorker(() => { Interlocked.Increment(ref runs); return Task.CompletedTask; }, e => Assert.Fail(e.Message));

        // Held and released without a kick: nothing runs.
        Assert.True(worker.TryEnterInline());
        Assert.True(worker.IsBusy);
        Assert.False(worker.TryEnterInline());
        worker.ExitInline(kick: false);
        Assert.False(worker.IsBusy);
        Assert.Equal(0, Volatile.Read(ref runs));

        // A kick while held is kept for the release, which starts one drain.
        Assert.True(worker.TryEnterInline());
        worker.Kick();
        worker.Kick();
        Assert.Equal(0, Volatile.Read(ref runs));
        worker.ExitInline(kick: false);
        WaitUntil(() => Volatile.Read(ref runs) == 1 && !worker.IsBusy, "the kept kick should run the drain once");

        // The holder may ask for a drain itself (it left work in the queue).
        Assert.True(worker.TryEnterInline());
        worker.ExitInline(kick: true);
        WaitUntil(() => Volatile.Read(ref runs) == 2 && !worker.IsBusy, "the release should run the drain");
        Assert.Equal(2, Volatile.Read(ref runs));
    }

    [Fact]
    public void Worker_cannot_be_held_while_a_drain_runs()
    {
        using var running = new ManualResetEventSlim();
        using var release = new ManualResetEventSlim();
        var worker = new VirtqueueWorker(
            () =>
            {
                running.Set();
                release.Wait(TimeSpan.FromSeconds(10), TestContext.Current.CancellationToken);
                return Task.CompletedTask;
            },
            e => Assert.Fail(e.Message));

        worker.Kick();
        Assert.True(running.Wait(TimeSpan.FromSeconds(10), TestContext.Current.CancellationToken));
        Assert.False(worker.TryEnterInline());
        release.Set();
        WaitUntil(() => !worker.IsBusy, "the worker should go idle");
        Assert.True(worker.TryEnterInline());
        worker.ExitInline(kick: false);
    }

    [Fact]
    public void Cancelled_drain_is_not_an_error()
    {
        int errors = 0;
        var worker = new VirtqueueWorker(() => Task.FromCanceled(new CancellationToken(canceled: true)), _ => Interlocked.Increment(ref errors));
        worker.Kick();
        WaitUntil(() => !worker.IsBusy, "the worker should go idle");
        Assert.Equal(0, Volatile.Read(ref errors));
    }

    private static VirtioTestRig Start(IVirtioDevice device)
    {
        var rig = new VirtioTestRig(device);
        rig.Driver.Initialize();
        return rig;
    }

    private static void WaitUntil(Func<bool> condition, string what) =>
        Assert.True(SpinWait.SpinUntil(condition, TimeSpan.FromSeconds(10)), what);

    /// <summary>Two queues, one worker each; a worker counts its runs and may throw.</summary>
    private sealed class TwoQueueDevice : VirtioDevice
    {
        private readonly int[] _runs = new int[2];

        public TwoQueueDevice()
        {
            AddWorker(_ => Run(0), 0);
            AddWorker(_ => Run(1), 1);
        }

        public int ThrowOnQueue { get; init; } = -1;
        public IReadOnlyList<int> Runs => [Volatile.Read(ref _runs[0]), Volatile.Read(ref _runs[1])];
        public int Resets { get; private set; }
        public VirtioDeviceContext? CurrentContext => Context;
        public override VirtioDeviceType DeviceType => VirtioDeviceType.Entropy;
        public override IReadOnlyList<ushort> QueueMaxSizes { get; } = [16, 16];

        public VirtqueueWorker AddWorkerFor(int queue) => AddWorker(_ => Task.CompletedTask, queue);

        protected override void OnReset() => Resets++;

        private Task Run(int queue)
        {
            Interlocked.Increment(ref _runs[queue]);
            return queue == ThrowOnQueue ? throw new InvalidOperationException("device bug") : Task.CompletedTask;
        }
    }
}
