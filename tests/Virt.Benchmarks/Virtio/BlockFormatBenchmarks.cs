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
/// 4 KiB random and 1 MiB sequential reads and writes through the whole virtio-blk path (mock driver: chain,
/// notify, wait for the used entry; the device moves guest memory to the file with preadv/pwritev) against the host
/// doing the same I/O with <see cref="RandomAccess"/> on the same file, for a raw and a (fully allocated) qcow2
/// image on tmpfs. Writes are not synced in either path.
/// </summary>
[Config(typeof(InProcessShortJob))]
[GroupBenchmarksBy(BenchmarkLogicalGroupRule.ByCategory)]
[CategoriesColumn]
public class BlockFormatBenchmarks
{
    private const long ImageSize = 64L << 20;
    private const int Small = 4096;
    private const int Large = 1 << 20;

    private GuestMemory _ram = null!;
    private IBlockBackend _backend = null!;
    private VirtioMmioTransport _transport = null!;
    private MockVirtioDriver _driver = null!;
    private Microsoft.Win32.SafeHandles.SafeFileHandle _host = null!;
    private string _path = null!;
    private long[] _offsets = null!;
    private int _next;
    private long _sequential;
    private byte[] _buffer = null!;
    private GuestAddress _header, _data, _status;

    /// <summary>The image format.</summary>
    [Params("raw", "qcow2")]
    public string Format { get; set; } = "raw";

    [GlobalSetup]
    public void Setup()
    {
        _path = Path.Combine("/dev/shm", $"virt-bench-{Guid.NewGuid():N}.{Format}");
        var chunk = new byte[Large];
        new Random(1).NextBytes(chunk);
        if (Format == "raw")
        {
            DiskImage.CreateRaw(_path, ImageSize);
        }
        else
        {
            DiskImage.Create(_path, ImageSize, DiskFormat.Qcow2);
        }

        // Fill the whole disk so qcow2 clusters are allocated (and, with 64 KiB clusters, contiguous).
        var fill = DiskImage.Open(_path);
        for (long o = 0; o < ImageSize; o += Large)
        {
            fill.WriteAsync(o, chunk).AsTask().GetAwaiter().GetResult();
        }

        fill.DisposeAsync().AsTask().GetAwaiter().GetResult();
        _backend = DiskImage.Open(_path);

        // The host baseline does the same I/O on the same open file (the image's own handle) at the same offsets
        // (qcow2: the file offsets are those of the guest's bytes shifted by the metadata, the sizes the same).
        _host = _backend switch
        {
            RawFileBlockBackend raw => raw.Handle,
            Qcow2BlockBackend qcow2 => qcow2.FileHandle!,
            _ => throw new InvalidOperationException("unexpected backend"),
        };
        _ram = GuestMemory.CreateRam(8 << 20);
        _transport = new VirtioMmioTransport(new VirtioBlockDevice(_backend), _ram, NullInterruptLine.Instance);
        _driver = new MockVirtioDriver(_transport, _ram, new GuestAddress(0x1000), new GuestAddress(0x100000));
        _driver.Initialize(queueSize: 256);
        _header = _driver.Allocate(16);
        _status = _driver.Allocate(16);
        _data = _driver.Allocate(Large);
        _buffer = GC.AllocateArray<byte>(Large, pinned: true);
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
    public int HostRandomRead4K() => RandomAccess.Read(_host, _buffer.AsSpan(0, Small), NextRandom());

    [BenchmarkCategory("4K random read"), Benchmark]
    public void DeviceRandomRead4K() => Request(0, NextRandom(), Small);

    [BenchmarkCategory("4K random write"), Benchmark(Baseline = true)]
    public void HostRandomWrite4K() => RandomAccess.Write(_host, _buffer.AsSpan(0, Small), NextRandom());

    [BenchmarkCategory("4K random write"), Benchmark]
    public void DeviceRandomWrite4K() => Request(1, NextRandom(), Small);

    [BenchmarkCategory("1M sequential read"), Benchmark(Baseline = true)]
    public int HostSequentialRead1M() => RandomAccess.Read(_host, _buffer.AsSpan(0, Large), NextSequential());

    [BenchmarkCategory("1M sequential read"), Benchmark]
    public void DeviceSequentialRead1M() => Request(0, NextSequential(), Large);

    [BenchmarkCategory("1M sequential write"), Benchmark(Baseline = true)]
    public void HostSequentialWrite1M() => RandomAccess.Write(_host, _buffer.AsSpan(0, Large), NextSequential());

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
