using System.Buffers.Binary;
using Virt.Devices.Virtio;
using Virt.Memory;
using Virt.Testing.Virtio;
using Xunit;

namespace Virt.Storage.Tests;

public sealed class BlockRobustnessTests
{
    [Fact(Timeout = 120_000)]
    public async Task Random_block_requests_never_escape_the_device_or_the_disk()
    {
        var random = new Random(4242);
        var backend = new BoundsCheckingBackend(new MemoryBlockBackend(64 * 1024));
        using var rig = new BlockRig(backend);
        uint[] types = [0, 1, 4, 8, 11, 13, 2, 99, uint.MaxValue];
        ulong[] sectors = [0, 1, 126, 127, 128, 129, ulong.MaxValue, ulong.MaxValue / 512, 1UL << 55];
        int served = 0;
        for (int i = 0; i < 20_000; i++)
        {
            rig.Driver.ResetAllocations();
            var header = new byte[16];
            BinaryPrimitives.WriteUInt32LittleEndian(header, types[random.Next(types.Length)]);
            BinaryPrimitives.WriteUInt64LittleEndian(header.AsSpan(8), sectors[random.Next(sectors.Length)] + (ulong)random.Next(3));
            var parts = new List<(GuestAddress, uint, bool)>();
            int split = random.Next(1, 16);
            var h1 = rig.Driver.Allocate((uint)split);
            var h2 = rig.Driver.Allocate((uint)(16 - split));
            rig.Memory.Write(h1, header.AsSpan(0, split));
            rig.Memory.Write(h2, header.AsSpan(split));
            parts.Add((h1, (uint)split, false));
            parts.Add((h2, (uint)(16 - split), false));
            int payloads = random.Next(3);
            bool writable = random.Next(2) == 0;
            for (int p = 0; p < payloads; p++)
            {
                uint len = random.Next(3) == 0 ? (uint)random.Next(1, 2000) : (uint)(512 * random.Next(1, 5));
                var a = rig.Driver.Allocate(len);
                if (!writable)
                {
                    var seg = new byte[Math.Min(len, 16)];
                    random.NextBytes(seg);
                    rig.Memory.Write(a, seg);
                }

                parts.Add((a, len, writable));
            }

            if (random.Next(20) != 0)
            {
                parts.Add((rig.Driver.Allocate(1), 1, true));
            }

            rig.Queue.AddChain([.. parts]);
            int raised = rig.Irq.RaiseCount;
            rig.Driver.Notify(0);
            var limit = DateTime.UtcNow.AddSeconds(10);
            while (!rig.Queue.TryTakeUsed(out _))
            {
                if (rig.NeedsReset)
                {
                    SpinWait.SpinUntil(() => !rig.Device.IsBusy, TimeSpan.FromSeconds(10));
                    rig.Driver.Initialize(queueSize: 64);
                    break;
                }

                Assert.True(DateTime.UtcNow < limit, $"request {i} neither completed nor failed the device");
                // The used buffer and a DEVICE_NEEDS_RESET both raise the interrupt; wait for it (polling every
                // millisecond in case the device suppressed it) instead of spinning against the device's worker.
                rig.Irq.WaitForRaise(raised, TimeSpan.FromMilliseconds(1));
                raised = rig.Irq.RaiseCount;
            }

            served++;
        }

        Assert.Equal(0, rig.Memory.Violations);
        Assert.Equal(0, backend.OutOfRange);
        Assert.DoesNotContain(rig.Logger.Messages, m => m.Contains("internal error", StringComparison.Ordinal));
        Assert.Equal(20_000, served);
        await Task.CompletedTask;
    }

    /// <summary>Counts calls outside the disk instead of letting the backend's own check turn them into I/O errors.</summary>
    private sealed class BoundsCheckingBackend(IBlockBackend inner) : IBlockBackend
    {
        private int _outOfRange;

        public int OutOfRange => _outOfRange;
        public long Capacity => inner.Capacity;
        public bool IsReadOnly => inner.IsReadOnly;

        public ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken = default)
        {
            Check(offset, buffer.Length);
            return inner.ReadAsync(offset, buffer, cancellationToken);
        }

        public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
        {
            Check(offset, buffer.Length);
            return inner.WriteAsync(offset, buffer, cancellationToken);
        }

        public ValueTask FlushAsync(CancellationToken cancellationToken = default) => inner.FlushAsync(cancellationToken);

        public ValueTask DiscardAsync(long offset, long length, CancellationToken cancellationToken = default)
        {
            Check(offset, length);
            return inner.DiscardAsync(offset, length, cancellationToken);
        }

        public ValueTask WriteZeroesAsync(long offset, long length, CancellationToken cancellationToken = default)
        {
            Check(offset, length);
            return inner.WriteZeroesAsync(offset, length, cancellationToken);
        }

        public ValueTask DisposeAsync() => inner.DisposeAsync();

        private void Check(long offset, long length)
        {
            if (offset < 0 || length < 0 || offset > Capacity || length > Capacity - offset)
            {
                Interlocked.Increment(ref _outOfRange);
            }
        }
    }
}
