using System.Buffers.Binary;
using System.Text;
using Virt.Devices.Virtio;
using Virt.Testing.Virtio;
using Xunit;

namespace Virt.Devices.Tests.Virtio;

/// <summary>
/// A device written the way a third party writes one: this file uses only the public API of Virt.Devices and the
/// public driver-side mock of Virt.Testing, nothing that InternalsVisibleTo would grant (docs/devices.md, "Writing a
/// virtio device", walks through the same device).
/// </summary>
public sealed class ThirdPartyDeviceTests
{
    [Fact]
    public void Echo_device_echoes_a_request_into_its_writable_buffer()
    {
        using var rig = new EchoRig();
        var reply = rig.Submit("hello, device"u8, room: 64);
        var used = rig.Queue.WaitUsed();

        Assert.Equal(13u, used.Length);
        Assert.Equal("hello, device", rig.ReadString(reply, 13));
        Assert.True(rig.Irq.RaiseCount > 0, "completing a request should interrupt the driver");
        Assert.Equal(1L, BinaryPrimitives.ReadInt64LittleEndian(rig.Driver.ReadConfig(0, 8)));
        Assert.Equal(0, rig.Memory.Violations);
    }

    [Fact]
    public void Negotiated_feature_changes_what_the_device_does()
    {
        using var rig = new EchoRig(features: EchoDevice.FeatureUppercase);
        Assert.Equal(EchoDevice.FeatureUppercase, rig.Features & EchoDevice.FeatureUppercase);
        var reply = rig.Submit("shout"u8, room: 8);
        rig.Queue.WaitUsed();

        Assert.Equal("SHOUT", rig.ReadString(reply, 5));
    }

    [Fact]
    public void Device_serves_a_new_activation_after_the_driver_resets_it()
    {
        using var rig = new EchoRig();
        Assert.Equal("one", rig.Echo("one"));

        rig.Driver.WriteRegister(0x70, 0);
        rig.Driver.ResetAllocations();
        rig.Driver.Initialize(wantedFeatures: 0);

        Assert.Equal("two", rig.Echo("two"));
        Assert.Equal(2L, BinaryPrimitives.ReadInt64LittleEndian(rig.Driver.ReadConfig(0, 8)));
    }

    [Fact]
    public void Request_with_too_little_room_for_the_echo_puts_the_device_into_needs_reset()
    {
        using var rig = new EchoRig();
        rig.Submit("twelve bytes"u8, room: 4);

        Assert.True(SpinWait.SpinUntil(() => rig.NeedsReset, TimeSpan.FromSeconds(10)), "the device should need a reset");
        Assert.Equal(0, rig.Queue.UsedIndex);
        Assert.Contains(rig.Logger.Messages, m => m.Contains("room for 4", StringComparison.Ordinal));
        Assert.Equal(0, rig.Memory.Violations);
    }

    [Fact]
    public void Oversized_request_is_refused_and_the_device_keeps_serving()
    {
        using var rig = new EchoRig();
        rig.Submit(new byte[EchoDevice.MaxRequest + 1], room: EchoDevice.MaxRequest + 1);
        rig.Submit("after"u8, room: 8);

        Assert.Equal(0u, rig.Queue.WaitUsed().Length);
        Assert.Equal(5u, rig.Queue.WaitUsed().Length);
        Assert.False(rig.NeedsReset);
        Assert.Contains(rig.Logger.Messages, m => m.Contains("refused a request", StringComparison.Ordinal));
    }

    [Fact]
    public void Descriptor_loop_from_a_hostile_driver_ends_in_needs_reset_not_an_exception()
    {
        using var rig = new EchoRig();
        var buffer = rig.Driver.Allocate(16);
        rig.Queue.WriteDescriptor(0, buffer, 16, MockSplitQueue.FlagNext, 1);
        rig.Queue.WriteDescriptor(1, buffer, 16, MockSplitQueue.FlagNext, 0);
        rig.Queue.Publish(0);
        rig.Driver.Notify(0);

        Assert.True(SpinWait.SpinUntil(() => rig.NeedsReset, TimeSpan.FromSeconds(10)), "the device should need a reset");
        Assert.Contains(rig.Logger.Messages, m => m.Contains("loops back", StringComparison.Ordinal));
        Assert.Equal(0, rig.Memory.Violations);
    }

    /// <summary>
    /// Queue 0 carries requests: a device-readable message followed by device-writable room for its echo. The
    /// configuration space holds the number of requests served (le64). Feature bit 0 asks for the echo in upper case.
    /// </summary>
    private sealed class EchoDevice : VirtioDevice
    {
        /// <summary>Feature bit 0: echo ASCII letters in upper case.</summary>
        public const ulong FeatureUppercase = 1UL << 0;

        /// <summary>Longest message echoed; longer ones are refused (answered with nothing).</summary>
        public const int MaxRequest = 4096;

        private long _served;

        public EchoDevice() => AddWorker(EchoAsync, 0);

        // No standard virtio device uses this id.
        public override VirtioDeviceType DeviceType => (VirtioDeviceType)0xEC0;

        public override ulong DeviceFeatures => FeatureUppercase;

        public override IReadOnlyList<ushort> QueueMaxSizes { get; } = [16];

        public override int ConfigSize => sizeof(long);

        public override void ReadConfig(int offset, Span<byte> data)
        {
            Span<byte> config = stackalloc byte[sizeof(long)];
            BinaryPrimitives.WriteInt64LittleEndian(config, Interlocked.Read(ref _served));
            config.Slice(offset, data.Length).CopyTo(data);
        }

        private Task EchoAsync(VirtioDeviceContext context)
        {
            var queue = context.Queues[0];
            bool upper = context.HasFeature(FeatureUppercase);
            Span<byte> message = stackalloc byte[MaxRequest];
            while (!context.Stopping.IsCancellationRequested && queue.TryPop(out var chain))
            {
                uint written = 0;
                if (chain.ReadableLength > MaxRequest)
                {
                    context.LogRefusedRequest($"echo request {chain.Head} of {chain.ReadableLength} bytes is longer than {MaxRequest}");
                }
                else if (chain.WritableLength < chain.ReadableLength)
                {
                    context.Fail($"echo request {chain.Head} has {chain.ReadableLength} bytes to echo but room for {chain.WritableLength}");
                    return Task.CompletedTask;
                }
                else
                {
                    var text = message[..chain.Read(0, message[..(int)chain.ReadableLength])];
                    if (upper)
                    {
                        Ascii.ToUpperInPlace(text, out _);
                    }

                    written = (uint)chain.Write(0, text);
                    Interlocked.Increment(ref _served);
                }

                queue.AddUsed(chain, written);
                context.SignalUsed(queue);
            }

            return Task.CompletedTask;
        }
    }

    private sealed class EchoRig : VirtioTestRig
    {
        public EchoRig(ulong features = 0)
            : base(new EchoDevice()) => Features = Driver.Initialize(features);

        public ulong Features { get; }
        public MockSplitQueue Queue => Driver.Queues[0];

        /// <summary>Publishes a request of <paramref name="message"/> with <paramref name="room"/> bytes for the echo and notifies; returns where the echo goes.</summary>
        public GuestAddress Submit(ReadOnlySpan<byte> message, uint room)
        {
            var request = Put(message);
            var reply = Driver.Allocate(room);
            Queue.AddChain((request, (uint)message.Length, false), (reply, room, true));
            Driver.Notify(0);
            return reply;
        }

        public string Echo(string message)
        {
            var reply = Submit(Encoding.ASCII.GetBytes(message), room: 64);
            return ReadString(reply, (int)Queue.WaitUsed().Length);
        }

        public string ReadString(GuestAddress at, int length)
        {
            var bytes = new byte[length];
            Memory.Read(at, bytes);
            return Encoding.ASCII.GetString(bytes);
        }
    }
}
