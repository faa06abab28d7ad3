using System.Buffers.Binary;
using Virt.Devices.Virtio;
using Virt.Memory;
using Virt.Testing.Virtio;

namespace Virt.Storage.Tests;

/// <summary>A virtio-blk device over a backend, behind a transport, driven by the mock driver.</summary>
internal sealed class BlockRig : VirtioTestRig
{
    public BlockRig(IBlockBackend backend, VirtioBlockOptions? options = null, ulong features = ulong.MaxValue, ushort queueSize = 64)
        : base(new VirtioBlockDevice(backend, options), ramSize: 0x400000, dataArea: 0x40000)
    {
        Device = (VirtioBlockDevice)Transport.Device;
        Features = Driver.Initialize(features, queueSize);
    }

    public VirtioBlockDevice Device { get; }
    public ulong Features { get; }
    public MockSplitQueue Queue => Driver.Queues[0];

    /// <summary>Submits one request and waits for it; returns the status byte and the used length.</summary>
    public (byte Status, uint UsedLength) Request(uint type, ulong sector, byte[]? writeData = null, int readLength = 0, byte[]? readInto = null, int queue = 0)
    {
        Driver.ResetAllocations();
        var header = Driver.Allocate(16);
        var h = new byte[16];
        BinaryPrimitives.WriteUInt32LittleEndian(h, type);
        BinaryPrimitives.WriteUInt64LittleEndian(h.AsSpan(8), sector);
        Memory.Write(header, h);
        var buffers = new List<(GuestAddress, uint, bool)> { (header, 16, false) };
        if (writeData is not null)
        {
            var data = Driver.Allocate((uint)writeData.Length);
            Memory.Write(data, writeData);
            buffers.Add((data, (uint)writeData.Length, false));
        }

        GuestAddress readAt = default;
        if (readLength > 0)
        {
            readAt = Driver.Allocate((uint)readLength);
            Memory.Write(readAt, new byte[readLength]);
            buffers.Add((readAt, (uint)readLength, true));
        }

        var status = Driver.Allocate(1);
        Memory.Write(status, (byte)0xff);
        buffers.Add((status, 1, true));
        var q = Driver.Queues[queue];
        q.AddChain([.. buffers]);
        Driver.Notify(queue);
        var used = q.WaitUsed();
        if (readInto is not null)
        {
            Memory.Read(readAt, readInto);
        }

        return (Memory.Read<byte>(status), used.Length);
    }
}

internal sealed class TempDir : IDisposable
{
    /// <summary>A new directory under <paramref name="under"/> (the temporary directory by default).</summary>
    public TempDir(string? under = null)
    {
        Path = System.IO.Path.Combine(under ?? System.IO.Path.GetTempPath(), "virt-storage-" + Guid.NewGuid().ToString("N"));
        System.IO.Directory.CreateDirectory(Path);
    }

    public string Path { get; }

    public string File(string name) => System.IO.Path.Combine(Path, name);

    /// <summary>Creates a raw image of <paramref name="size"/> bytes (all holes) named <paramref name="name"/> in the directory; returns its path.</summary>
    public string RawImage(string name = "disk.img", long size = 1 << 20)
    {
        string path = File(name);
        DiskImage.CreateRaw(path, size);
        return path;
    }

    public void Dispose()
    {
        try
        {
            System.IO.Directory.Delete(Path, recursive: true);
        }
        catch (IOException)
        {
        }
    }
}
