using System.Diagnostics;
using System.Diagnostics.Metrics;
using Virt.Network;
using Virt.Sandbox;
using Virt.Testing;
using Xunit;

namespace Virt.Sdk.Tests;

/// <summary>
/// Metrics and traces as a listener sees them. Listeners are process-wide and other tests run alongside, so each check
/// counts only what carries this test's own names, or asks for at least what this test caused.
/// </summary>
public sealed class TelemetryTests
{
    private sealed class Recorder : IDisposable
    {
        private readonly MeterListener _meters = new();
        private readonly ActivityListener _activities;

        public Recorder(string meter, string source)
        {
            _meters.InstrumentPublished = (instrument, listener) =>
            {
                if (instrument.Meter.Name == meter)
                {
                    listener.EnableMeasurementEvents(instrument);
                }
            };
            _meters.SetMeasurementEventCallback<long>((instrument, value, tags, _) => Add(instrument.Name, value, tags));
            _meters.SetMeasurementEventCallback<double>((instrument, value, tags, _) => Add(instrument.Name, (long)Math.Ceiling(value), tags));
            _meters.Start();
            _activities = new ActivityListener
            {
                ShouldListenTo = s => s.Name == source,
                Sample = (ref ActivityCreationOptions<ActivityContext> _) => ActivitySamplingResult.AllDataAndRecorded,
                ActivityStopped = a =>
                {
                    lock (Activities)
                    {
                        Activities.Add(a);
                    }
                },
            };
            ActivitySource.AddActivityListener(_activities);
        }

        public List<(string Instrument, long Value, Dictionary<string, object?> Tags)> Measurements { get; } = [];

        public List<Activity> Activities { get; } = [];

        public long Sum(string instrument, string tag, string value)
        {
            lock (Measurements)
            {
                return Measurements.Where(m => m.Instrument == instrument && Equals(m.Tags.GetValueOrDefault(tag), value)).Sum(m => m.Value);
            }
        }

        public void Dispose()
        {
            _meters.Dispose();
            _activities.Dispose();
        }

        private void Add(string instrument, long value, ReadOnlySpan<KeyValuePair<string, object?>> tags)
        {
            var copy = new Dictionary<string, object?>();
            foreach (var t in tags)
            {
                copy[t.Key] = t.Value;
            }

            lock (Measurements)
            {
                Measurements.Add((instrument, value, copy));
            }
        }
    }

    [Fact]
    public async Task A_vm_run_counts_exits_and_the_stop_and_traces_one_activity()
    {
        using var recorder = new Recorder(VirtualizationTelemetry.MeterName, VirtualizationTelemetry.ActivitySourceName);
        string name = "telemetry-" + Guid.NewGuid().ToString("N");
        // Three port writes to the debug-exit port's neighbour (unclaimed ports are ignored), then the debug exit.
        byte[] code =
        [
            0x66, 0xBA, 0x00, 0x05, 0xEE, 0xEE, 0xEE,   // mov dx, 0x500; out dx, al (x3)
            0x66, 0xBA, 0x01, 0x05, 0x31, 0xC0, 0xEE,   // mov dx, 0x501; xor eax, eax; out dx, al
            0xF4,
        ];
        await using (var vm = VirtualMachine.CreateBuilder()
            .WithName(name)
            .WithInterpreter()
            .WithMemoryMiB(4)
            .WithFlatBinary(code, new GuestAddress(0x100000))
            .WithEntryPoint(new GuestAddress(0x100000))
            .WithDebugExit()
            .Build())
        {
            var exit = await vm.RunAsync(TestContext.Current.CancellationToken);
            Assert.Equal(StopReason.DebugExit, exit.Reason);
        }

        Assert.True(recorder.Sum("virt.vm.exits", "virt.exit.reason", "port_io") >= 4);
        Assert.True(recorder.Sum("virt.vm.stops", "virt.stop.reason", "debug_exit") >= 1);
        lock (recorder.Measurements)
        {
            Assert.Contains(recorder.Measurements, m => m.Instrument == "virt.vm.instructions" && m.Value > 0);
        }

        Activity run;
        lock (recorder.Activities)
        {
            run = Assert.Single(recorder.Activities, a => (string?)a.GetTagItem("virt.vm.name") == name);
        }

        Assert.Equal("virt.vm.run", run.OperationName);
        Assert.Equal("interpreter", run.GetTagItem("virt.backend"));
        Assert.Equal("debug_exit", run.GetTagItem("virt.stop.reason"));
        Assert.Equal(ActivityStatusCode.Unset, run.Status);
    }

    [Fact]
    public async Task Sandbox_runs_and_limits_are_counted_and_traced()
    {
        string dir = Path.Combine(Path.GetTempPath(), "virt-telemetry-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dir);
        try
        {
            File.WriteAllText(Path.Combine(dir, "p.c"), "int main(int c, char **v) { if (c > 1) for (;;) { } return 3; }\n");
            HostTools.Run("gcc", $"-static -O1 -o {dir}/p {dir}/p.c");
            using var recorder = new Recorder(SandboxTelemetry.MeterName, SandboxTelemetry.ActivitySourceName);
            using var parent = new Activity("test-parent").Start();

            await using (var quick = Sandbox.Sandbox.CreateBuilder().WithExecutable(Path.Combine(dir, "p")).Build())
            {
                var r = await quick.RunAsync(cancellationToken: TestContext.Current.CancellationToken);
                Assert.Equal(3, r.ExitCode);
            }

            await using (var spin = Sandbox.Sandbox.CreateBuilder().WithExecutable(Path.Combine(dir, "p")).WithArguments("spin")
                .WithTimeLimit(TimeSpan.FromMilliseconds(200)).Build())
            {
                var r = await spin.RunAsync(cancellationToken: TestContext.Current.CancellationToken);
                Assert.Equal(SandboxStatus.TimeLimitExceeded, r.Status);
            }

            Assert.True(recorder.Sum("virt.sandbox.runs", "virt.sandbox.outcome", "exited") >= 1);
            Assert.True(recorder.Sum("virt.sandbox.runs", "virt.sandbox.outcome", "time_limit_exceeded") >= 1);
            Assert.True(recorder.Sum("virt.sandbox.limits_hit", "virt.sandbox.limit", "time") >= 1);
            List<Activity> mine;
            lock (recorder.Activities)
            {
                mine = [.. recorder.Activities.Where(a => a.ParentSpanId == parent.SpanId)];
            }

            Assert.Equal(2, mine.Count);
            Assert.All(mine, a => Assert.Equal("virt.sandbox.run", a.OperationName));
            Assert.Contains(mine, a => Equals(a.GetTagItem("virt.sandbox.exit_code"), 3));
            Assert.Contains(mine, a => (string?)a.GetTagItem("virt.sandbox.outcome") == "time_limit_exceeded");
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Fact]
    public async Task A_virtual_network_counts_the_frames_it_drops()
    {
        using var recorder = new Recorder(NetworkTelemetry.MeterName, "none");
        string name = "lan-" + Guid.NewGuid().ToString("N");
        var network = new VirtualNetwork(name);
        network.Start();
        var port = network.Attach("a");
        await port.SendAsync(new byte[10], TestContext.Current.CancellationToken);   // shorter than an Ethernet header
        network.Stop();
        await port.SendAsync(new byte[64], TestContext.Current.CancellationToken);   // on a stopped switch

        lock (recorder.Measurements)
        {
            var mine = recorder.Measurements.Where(m => Equals(m.Tags.GetValueOrDefault("virt.network.name"), name)).ToList();
            Assert.Contains(mine, m => Equals(m.Tags["virt.network.drop_reason"], "runt"));
            Assert.Contains(mine, m => Equals(m.Tags["virt.network.drop_reason"], "stopped"));
        }

        Assert.Equal(2, network.FramesDropped);
    }
}
