using System.Runtime.InteropServices;
using System.Text;
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Configs;
using Virt.Storage.SharedFolders;

namespace Virt.Benchmarks.Virtio;

/// <summary>
/// The shared-folder request handler driven directly with FUSE messages (no guest, no virtqueue): 1 MiB reads and
/// writes of a 64 MiB file on tmpfs, and a metadata cycle (create, getattr, release, unlink), each against the host
/// doing the same with the BCL on the same directory. MiB/s = 1 MiB / mean; metadata ops/s = 4 / mean.
/// </summary>
[Config(typeof(InProcessShortJob))]
[GroupBenchmarksBy(BenchmarkLogicalGroupRule.ByCategory)]
[CategoriesColumn]
public class SharedFolderBenchmarks
{
    private const int Chunk = 1 << 20;
    private const long FileSize = 64L << 20;

    private string _root = null!;
    private SharedFolderServer _server = null!;
    private Microsoft.Win32.SafeHandles.SafeFileHandle _host = null!;
    private byte[] _message = null!;
    private byte[] _reply = null!;
    private byte[] _data = null!;
    private ulong _fh;
    private ulong _unique;
    private long _offset;

    [GlobalSetup]
    public void Setup()
    {
        _root = Path.Combine("/dev/shm", $"virt-share-bench-{Guid.NewGuid():N}");
        Directory.CreateDirectory(_root);
        _data = new byte[Chunk];
        new Random(1).NextBytes(_data);
        string file = Path.Combine(_root, "big.bin");
        using (var f = File.Create(file))
        {
            for (long o = 0; o < FileSize; o += Chunk)
            {
                f.Write(_data);
            }
        }

        _host = File.OpenHandle(file, FileMode.Open, FileAccess.ReadWrite);
        _server = new SharedFolderServer(_root, readOnly: false);
        _message = new byte[Fuse.InHeaderSize + 64 + Chunk];
        _reply = new byte[Fuse.OutHeaderSize + Chunk];
        Send(FuseOpcode.Init, 0, Bytes(new FuseInitIn { Major = 7, Minor = 38, Flags = uint.MaxValue }));
        Send(FuseOpcode.Lookup, 1, Name("big.bin"));
        ulong node = MemoryMarshal.Read<FuseEntryOut>(_reply.AsSpan(Fuse.OutHeaderSize)).NodeId;
        Send(FuseOpcode.Open, node, Bytes(new FuseOpenIn { Flags = 2 }));
        _fh = MemoryMarshal.Read<FuseOpenOut>(_reply.AsSpan(Fuse.OutHeaderSize)).Fh;
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _server.Dispose();
        _host.Dispose();
        Directory.Delete(_root, recursive: true);
    }

    [Benchmark(Baseline = true), BenchmarkCategory("read 1 MiB")]
    public int HostRead() => RandomAccess.Read(_host, _reply.AsSpan(Fuse.OutHeaderSize), NextOffset());

    [Benchmark, BenchmarkCategory("read 1 MiB")]
    public int FuseRead() => Send(FuseOpcode.Read, 0, Bytes(new FuseIoIn { Fh = _fh, Offset = (ulong)NextOffset(), Size = Chunk }));

    [Benchmark(Baseline = true), BenchmarkCategory("write 1 MiB")]
    public void HostWrite() => RandomAccess.Write(_host, _data, NextOffset());

    [Benchmark, BenchmarkCategory("write 1 MiB")]
    public int FuseWrite() => Send(FuseOpcode.Write, 0, Bytes(new FuseIoIn { Fh = _fh, Offset = (ulong)NextOffset(), Size = Chunk }), _data);

    [Benchmark(Baseline = true), BenchmarkCategory("metadata: create, stat, close, unlink")]
    public long HostMetadata()
    {
        string path = Path.Combine(_root, "m");
        File.Create(path).Dispose();
        long length = new FileInfo(path).Length;
        File.Delete(path);
        return length;
    }

    [Benchmark, BenchmarkCategory("metadata: create, stat, close, unlink")]
    public int FuseMetadata()
    {
        Send(FuseOpcode.Create, 1, Bytes(new FuseCreateIn { Flags = 0x42, Mode = 0x1A4 }), Name("m"));
        var entry = MemoryMarshal.Read<FuseEntryOut>(_reply.AsSpan(Fuse.OutHeaderSize));
        ulong fh = MemoryMarshal.Read<FuseOpenOut>(_reply.AsSpan(Fuse.OutHeaderSize + Fuse.EntryOutSize)).Fh;
        Send(FuseOpcode.GetAttr, entry.NodeId, Bytes(new FuseGetAttrIn()));
        Send(FuseOpcode.Release, 0, Bytes(new FuseReleaseIn { Fh = fh }));
        Send(FuseOpcode.Forget, entry.NodeId, Bytes(new FuseForgetIn { Nlookup = 1 }));
        return Send(FuseOpcode.Unlink, 1, Name("m"));
    }

    private long NextOffset()
    {
        long offset = _offset;
        _offset = (_offset + Chunk) % FileSize;
        return offset;
    }

    private int Send(FuseOpcode opcode, ulong node, byte[] arguments, byte[]? data = null)
    {
        int length = Fuse.InHeaderSize + arguments.Length + (data?.Length ?? 0);
        var header = new FuseInHeader { Length = (uint)length, Opcode = (uint)opcode, Unique = ++_unique, NodeId = node };
        MemoryMarshal.Write(_message, in header);
        arguments.CopyTo(_message, Fuse.InHeaderSize);
        data?.CopyTo(_message, Fuse.InHeaderSize + arguments.Length);
        int n = _server.Handle(_message.AsSpan(0, length), _reply);
        if (n >= Fuse.OutHeaderSize && MemoryMarshal.Read<FuseOutHeader>(_reply).Error != 0)
        {
            throw new InvalidOperationException($"{opcode} failed with errno {-MemoryMarshal.Read<FuseOutHeader>(_reply).Error}");
        }

        return n;
    }

    private static byte[] Bytes<T>(T value)
        where T : unmanaged
    {
        var b = new byte[Marshal.SizeOf<T>()];
        MemoryMarshal.Write(b, in value);
        return b;
    }

    private static byte[] Name(string name) => Encoding.UTF8.GetBytes(name + "\0");
}
