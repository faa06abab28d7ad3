using System.Buffers.Binary;
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Configs;
using Virt.Devices;
using Virt.Devices.Virtio;
using Virt.Memory;
using Virt.Storage;
using Virt.Testing.Virtio;

namespace Virt.Benchmarks.Virtio;

/// <summary>
/// virtio-blk I/O through the whole device path (mock driver builds the chain, notifies, waits for the used entry)
/// against the same I/O done by the host directly on the same image, on tmpfs (/dev/shm) and on disk (/var/tmp).
/// Writes are not fsynced in either path: the figures compare request handling, not the disk.
/// </summary>
[Config(typeof(InProcessShortJob))]
[GroupBenchmarksBy(BenchmarkLogicalGroupRule.ByCategory)]
[CategoriesColumn]
public class VirtioBlockBenchmarks
{
    private const long ImageSize = 64L << 20;
    private const int Small = 4096;
    private const int Large = 1 << 20;

    private GuestMemory _ram = null!;
    private RawFileBlockBackend _backend = null!;
    private VirtioMmioTransport _transport = null!;
    private MockVirtioDriver _driver = null!;
    private string _path = null!;
    private long[] _offsets = null!;
    private int _next;
    private long _sequential;
    private byte[] _buffer = null!;
    private GuestAddress _header, _data, _status;

    /// <summary>Where the image lives.</summary>
    [Params("tmpfs", "disk")]
    public string Location { get; set; } = "tmpfs";

    [GlobalSetup]
    public void Setup()
    {
        string dir = Location == "tmpfs" ? "/dev/shm" : "/var/tmp";
        _path = Path.Combine(dir, $"virt-bench-{Guid.NewGuid():N}.img");
        DiskImage.CreateRaw(_path, ImageSize);
        using (var fill = new FileStream(_path, FileMode.Open, FileAccess.Write))
        {
            var chunk = new byte[Large];
            new Random(1).NextBytes(chunk);
            for (long o = 0; o < ImageSize; o += Large)
            {
                fill.Write(chunk);
            }
        }

        _backend = DiskImage.OpenRaw(_path);
        _ram = GuestMemory.CreateRam(8 << 20);
        _transport = new VirtioMmioTransport(new VirtioBlockDevice(_backend), _ram, NullInterruptLine.Instance);
        _driver = new MockVirtioDriver(_transport, _ram, new GuestAddress(0x1000), new GuestAddress(0x100000));
        _driver.Initialize(queueSize: 256);
        _header = _driver.Allocate(16);
        _status = _driver.Allocate(16);
        _data = _driver.Allocate(Large);
        _buffer = new byte[Large];
        var random = new Random(7);
        _offsets = Enumerable.Range(0, 4096).Select(_ => random.NextInt64(ImageSize / Small) * Small).ToArray();
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _driver.WriteRegister(0x70, 0);
        _backend.DisposeAsync().AsTask().GetAwaiter().GetResult();
        _ram.Dispose();
        File.Delete(_path);
    }

    [BenchmarkCategory("4K random read"), Benchmark(Baseline = true)]
    public ValueTask HostRandomRead4K() => _backend.ReadAsync(NextRandom(), _buffer.AsMemory(0, Small));

    [BenchmarkCategory("4K random read"), Benchmark]
    public void DeviceRandomRead4K() => Request(0, NextRandom(), Small);

    [BenchmarkCategory("4K random write"), Benchmark(Baseline = true)]
    public ValueTask HostRandomWrite4K() => _backend.WriteAsync(NextRandom(), _buffer.AsMemory(0, Small));

    [BenchmarkCategory("4K random write"), Benchmark]
    public void DeviceRandomWrite4K() => Request(1, NextRandom(), Small);

    [BenchmarkCategory("1M sequential read"), Benchmark(Baseline = true)]
    public ValueTask HostSequentialRead1M() => _backend.ReadAsync(NextSequential(), _buffer.AsMemory(0, Large));

    [BenchmarkCategory("1M sequential read"), Benchmark]
    public void DeviceSequentialRead1M() => Request(0, NextSequential(), Large);

    [BenchmarkCategory("1M sequential write"), Benchmark(Baseline = true)]
    public ValueTask HostSequentialWrite1M() => _backend.WriteAsync(NextSequential(), _buffer.AsMemory(0, Large));

    [BenchmarkCategory("1M sequential write"), Benchmark]
    public void DeviceSequentialWrite1M() => Request(1, NextSequential(), Large);

    private long NextRandom() => _offsets[_next++ & 4095];

    private long NextSequential()
    {
        long o = _sequential;
        _sequential = (_sequential + Large) % ImageSize;
        return o;
    }

    private void Request(uint type, long offset, int length)
    {
        Span<byte> h = stackalloc byte[16];
        BinaryPrimitives.WriteUInt32LittleEndian(h, type);
        BinaryPrimitives.WriteUInt64LittleEndian(h[8..], (ulong)(offset / 512));
        _ram.Write(_header, h);
        var queue = _driver.Queues[0];
        queue.AddChain((_header, 16, false), (_data, (uint)length, type == 0), (_status, 1, true));
        _driver.Notify(0);
        queue.WaitUsed();
    }
}
