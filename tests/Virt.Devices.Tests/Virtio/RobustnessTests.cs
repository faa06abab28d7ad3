using System.Buffers.Binary;
using Virt.Devices.Virtio;
using Virt.Memory;
using Virt.Testing.Virtio;
using Xunit;

namespace Virt.Devices.Tests.Virtio;

/// <summary>
/// Throws random queue layouts, ring contents and register writes at the transport and split virtqueue, and
/// checks that nothing escapes: no exception out of the device, no hang, no access outside guest RAM.
/// </summary>
public sealed class RobustnessTests
{
    private const int Iterations = 1_000_000;

    [Fact(Timeout = 120_000)]
    public async Task A_million_random_queue_layouts_and_register_writes_never_escape()
    {
        await Task.Yield();
        int seed = Environment.GetEnvironmentVariable("VIRT_FUZZ_SEED") is { } s ? int.Parse(s, System.Globalization.CultureInfo.InvariantCulture) : 20261126;
        var random = new Random(seed);

        // RAM, a hole, more RAM, and a ROM page: the interesting edges for addresses.
        using var ram = GuestMemory.Create(
            GuestMemoryRegionSpec.Ram(GuestAddress.Zero, 0x10000),
            GuestMemoryRegionSpec.Ram(new GuestAddress(0x20000), 0x10000),
            GuestMemoryRegionSpec.Rom(new GuestAddress(0x30000), 0x1000));
        var memory = new CheckedGuestMemory(ram);
        var device = new FuzzDevice();
        var transport = new VirtioMmioTransport(device, memory, new RecordingInterruptLine());
        var driver = new MockVirtioDriver(transport, memory, new GuestAddress(0x1000), new GuestAddress(0x8000));
        ulong[] interesting = [0, 0x8000, 0xfff0, 0xfffc, 0x10000, 0x1fff0, 0x20000, 0x2fff8, 0x30000, 0x30ff0, 0x31000, ulong.MaxValue - 7, 1UL << 63];

        long registerWrites = 0;
        long layouts = 0;
        long chains = 0;
        MockSplitQueue? queue = null;
        Span<byte> value = stackalloc byte[8];
        for (int i = 0; i < Iterations; i++)
        {
            if (queue is null || (driver.Status & (uint)VirtioDeviceStatus.DeviceNeedsReset) != 0 || random.Next(64) == 0)
            {
                queue = SetUp(driver, memory, random, interesting, ref registerWrites);
            }

            if (queue is not null)
            {
                RandomizeRings(queue, memory, random, interesting);
                layouts++;
                driver.Notify(random.Next(4) == 0 ? random.Next(3) : 0);
                registerWrites++;
            }

            // Random register traffic at random widths, including the status register and config space.
            int writes = random.Next(3);
            for (int w = 0; w < writes; w++)
            {
                int width = 1 << random.Next(4);
                ulong offset = random.Next(8) == 0 ? (ulong)random.NextInt64() : (ulong)random.Next(0x220);
                random.NextBytes(value[..width]);
                if (random.Next(2) == 0)
                {
                    transport.Write(offset, value[..width]);
                    registerWrites++;
                }
                else
                {
                    transport.Read(offset, value[..width]);
                }
            }

            chains = device.Chains;
        }

        Assert.True(memory.Violations == 0, $"seed {seed}: {memory.Violations} access(es) outside guest RAM, last {memory.LastViolation}");
        Assert.Null(device.Escaped);
        Assert.True(layouts + registerWrites >= 1_000_000, $"only {layouts} layouts and {registerWrites} register writes");
        Assert.True(layouts >= Iterations / 2, $"only {layouts} queue layouts were exercised");
        Assert.True(chains > 1000, $"only {chains} chains were well-formed enough to serve; the generator is too hostile to test the happy path");
    }

    private static MockSplitQueue? SetUp(MockVirtioDriver driver, IGuestMemory memory, Random random, ulong[] interesting, ref long registerWrites)
    {
        driver.WriteRegister(0x70, 0);
        driver.WriteRegister(0x70, 1 | 2);
        driver.WriteRegister(0x24, 0);
        driver.WriteRegister(0x20, random.Next(4) == 0 ? (uint)random.Next() : (uint)((1 << 28) | (random.Next(2) << 29)));
        driver.WriteRegister(0x24, 1);
        driver.WriteRegister(0x20, random.Next(16) == 0 ? 0u : 1u);
        driver.WriteRegister(0x70, 1 | 2 | 8);
        driver.WriteRegister(0x30, 0);
        registerWrites += 8;

        ushort size = random.Next(8) == 0 ? (ushort)random.Next(0, 40) : (ushort)(1 << random.Next(0, 5));
        MockSplitQueue? queue = null;
        GuestAddress desc, avail, used;
        if (random.Next(8) == 0)
        {
            desc = new GuestAddress(interesting[random.Next(interesting.Length)] + (ulong)random.Next(16));
            avail = new GuestAddress(interesting[random.Next(interesting.Length)] + (ulong)random.Next(4));
            used = new GuestAddress(interesting[random.Next(interesting.Length)] + (ulong)random.Next(8));
        }
        else
        {
            queue = new MockSplitQueue(memory, new GuestAddress(0x1000), Math.Max(size, (ushort)1));
            desc = queue.DescriptorTable;
            avail = queue.AvailRing;
            used = queue.UsedRing;
        }

        driver.WriteRegister(0x38, size);
        driver.WriteRegister(0x80, (uint)desc.Value);
        driver.WriteRegister(0x84, (uint)(desc.Value >> 32));
        driver.WriteRegister(0x90, (uint)avail.Value);
        driver.WriteRegister(0x94, (uint)(avail.Value >> 32));
        driver.WriteRegister(0xa0, (uint)used.Value);
        driver.WriteRegister(0xa4, (uint)(used.Value >> 32));
        driver.WriteRegister(0x44, 1);
        driver.WriteRegister(0x70, 1 | 2 | 8 | 4);
        registerWrites += 9;
        return (driver.Status & 4) != 0 && (driver.Status & 0x40) == 0 ? queue : null;
    }

    private static void RandomizeRings(MockSplitQueue queue, IGuestMemory memory, Random random, ulong[] interesting)
    {
        int count = random.Next(1, queue.Size + 1);
        Span<byte> d = stackalloc byte[16];
        for (int i = 0; i < count; i++)
        {
            int index = random.Next(queue.Size);
            ulong address = random.Next(4) switch
            {
                0 => interesting[random.Next(interesting.Length)] + (ulong)random.Next(-16, 16),
                1 => (ulong)random.NextInt64(),
                _ => 0x8000 + (ulong)random.Next(0x7000),
            };
            uint length = random.Next(4) switch
            {
                0 => (uint)random.Next(),
                1 => (uint)(16 * random.Next(0, 40)),
                _ => (uint)random.Next(0, 512),
            };
            ushort flags = (ushort)(random.Next(8) == 0 ? random.Next(0x10000) : random.Next(8));
            ushort next = (ushort)(random.Next(8) == 0 ? random.Next(0x10000) : random.Next(queue.Size));

            // Point some indirect descriptors at a table made of random descriptors too.
            if ((flags & 4) != 0 && random.Next(2) == 0)
            {
                address = 0xc000 + (ulong)(16 * random.Next(0, 64));
                for (int t = 0; t < 4; t++)
                {
                    BinaryPrimitives.WriteUInt64LittleEndian(d, 0x8000 + (ulong)random.Next(0x3000));
                    BinaryPrimitives.WriteUInt32LittleEndian(d[8..], (uint)random.Next(0, 300));
                    BinaryPrimitives.WriteUInt16LittleEndian(d[12..], (ushort)random.Next(8));
                    BinaryPrimitives.WriteUInt16LittleEndian(d[14..], (ushort)random.Next(6));
                    memory.Write(new GuestAddress(address + (ulong)(16 * t)), d);
                }
            }

            queue.WriteDescriptor(index, new GuestAddress(address), length, flags, next);
        }

        int publish = random.Next(0, 4);
        for (int p = 0; p < publish; p++)
        {
            queue.Publish(random.Next(16) == 0 ? (ushort)random.Next(0x10000) : (ushort)random.Next(queue.Size));
        }

        if (random.Next(32) == 0)
        {
            queue.SetAvailIndex((ushort)random.Next(0x10000));
        }

        queue.SetUsedEvent((ushort)random.Next(0x10000));
        queue.SetAvailFlags((ushort)random.Next(2));
    }

    /// <summary>Serves chains inline: reads every readable byte, writes every writable byte, catches nothing.</summary>
    private sealed class FuzzDevice : IVirtioDevice
    {
        private readonly byte[] _scratch = new byte[1 << 16];
        private VirtioDeviceContext? _context;

        public long Chains { get; private set; }
        public Exception? Escaped { get; private set; }
        public VirtioDeviceType DeviceType => VirtioDeviceType.Block;
        public ulong DeviceFeatures => 0;
        public IReadOnlyList<ushort> QueueMaxSizes { get; } = [16, 4];
        public int ConfigSize => 16;
        public void ReadConfig(int offset, Span<byte> data) => data.Fill(0x5a);
        public void WriteConfig(int offset, ReadOnlySpan<byte> data) { }
        public void Activate(VirtioDeviceContext context) => _context = context;
        public void Reset() => _context = null;

        public void QueueNotified(int queueIndex)
        {
            try
            {
                if (_context is not { } context)
                {
                    return;
                }

                var queue = context.Queues[queueIndex];
                while (queue.TryPop(out var chain))
                {
                    Chains++;
                    chain.Read(0, _scratch.AsSpan(0, (int)Math.Min(chain.ReadableLength, _scratch.Length)));
                    int written = chain.Write(0, _scratch.AsSpan(0, (int)Math.Min(chain.WritableLength, _scratch.Length)));
                    queue.AddUsed(chain, (uint)written);
                }

                context.SignalUsed(queue);
            }
            catch (Exception e)
            {
                Escaped ??= e;
                throw;
            }
        }
    }
}
