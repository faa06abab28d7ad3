using System.Net.Sockets;
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Configs;
using Virt.Devices;
using Virt.Devices.Virtio;
using Virt.Memory;
using Virt.Testing.Virtio;

namespace Virt.Benchmarks.Virtio;

/// <summary>
/// The host side of virtio-vsock against a mock driver that answers at once: a 64-byte round trip (host stream
/// write, the packet in a receive buffer, the driver's reply on the transmit queue, host stream read) and 1 MiB
/// from host to guest in 4 KiB receive buffers, each against the same exchange over a Unix-domain socket pair on
/// the host (the kernel's loopback as the baseline). The guest's own costs (its driver, interrupts, the
/// interpreter) are not in these figures: see LinuxGuestAgentTests for those.
/// </summary>
[Config(typeof(InProcessShortJob))]
[GroupBenchmarksBy(BenchmarkLogicalGroupRule.ByCategory)]
[CategoriesColumn]
public class VsockBenchmarks
{
    private const int Small = 64;
    private const int Bulk = 1 << 20;
    private const uint GuestPort = 1234;
    private const uint HostPort = 5000;

    private readonly byte[] _small = new byte[Small];
    private readonly byte[] _bulk = new byte[Bulk];
    private readonly byte[] _header = new byte[VsockHeader.Size];
    private GuestMemory _ram = null!;
    private MockVirtioDriver _driver = null!;
    private VsockStream _stream = null!;
    private GuestAddress _tx;
    private GuestAddress[] _rx = null!;
    private uint _received;
    private Socket _a = null!;
    private Socket _b = null!;

    [GlobalSetup]
    public void Setup()
    {
        _ram = GuestMemory.CreateRam(16 << 20);
        var device = new VirtioVsockDevice(3);
        var transport = new VirtioMmioTransport(device, _ram, NullInterruptLine.Instance);
        _driver = new MockVirtioDriver(transport, _ram, new GuestAddress(0x1000), new GuestAddress(0x100000));
        _driver.Initialize(queueSize: 256);
        _tx = _driver.Allocate(VsockHeader.Size + Small);
        _rx = new GuestAddress[256];
        for (int i = 0; i < _rx.Length; i++)
        {
            _rx[i] = _driver.Allocate(VsockHeader.Size + 4096);
        }

        PostAllReceiveBuffers();
        using var listener = device.Listen(HostPort);
        SendFromGuest(VsockProtocol.OpRequest, 0);
        _stream = listener.AcceptAsync().AsTask().GetAwaiter().GetResult();
        TakeReceived(); // RESPONSE

        (_a, _b) = SocketPair();
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _stream.Dispose();
        _a.Dispose();
        _b.Dispose();
        _ram.Dispose();
    }

    [BenchmarkCategory("64 B round trip"), Benchmark(Baseline = true)]
    public void UnixSocketRoundTrip()
    {
        _a.Send(_small);
        ReceiveExactly(_b, _small);
        _b.Send(_small);
        ReceiveExactly(_a, _small);
    }

    [BenchmarkCategory("64 B round trip"), Benchmark]
    public void VsockRoundTrip()
    {
        _stream.Write(_small);
        TakeReceived();
        SendFromGuest(VsockProtocol.OpRw, Small);
        _stream.ReadExactly(_small);
    }

    [BenchmarkCategory("1 MiB host to guest"), Benchmark(Baseline = true)]
    public void UnixSocketBulk()
    {
        var send = Task.Run(() => _a.Send(_bulk));
        ReceiveExactly(_b, _bulk);
        send.GetAwaiter().GetResult();
    }

    [BenchmarkCategory("1 MiB host to guest"), Benchmark]
    public void VsockBulk()
    {
        var write = _stream.WriteAsync(_bulk).AsTask();
        int got = 0;
        while (got < Bulk)
        {
            got += TakeReceived();
        }

        write.GetAwaiter().GetResult();
    }

    /// <summary>Takes the next used receive buffer, gives it back to the device, and returns its payload size.</summary>
    private int TakeReceived()
    {
        var queue = _driver.Queues[VirtioVsockDevice.ReceiveQueue];
        var (id, length) = queue.WaitUsed();
        queue.AddChain((_rx[id], VsockHeader.Size + 4096, true));
        _driver.Notify(VirtioVsockDevice.ReceiveQueue);
        int payload = (int)length - VsockHeader.Size;
        _received += (uint)payload;

        // Consume at once, as a reading guest would, and say so now and then.
        if (_received % (64 * 1024) < (uint)payload)
        {
            SendFromGuest(VsockProtocol.OpCreditUpdate, 0);
        }

        return payload;
    }

    private void SendFromGuest(ushort op, int length)
    {
        new VsockHeader(3, 2, GuestPort, HostPort, (uint)length, VsockProtocol.TypeStream, op, 0, 256 * 1024, _received).Write(_header);
        _ram.Write(_tx, _header);
        var queue = _driver.Queues[VirtioVsockDevice.TransmitQueue];
        queue.AddChain((_tx, (uint)(VsockHeader.Size + length), false));
        _driver.Notify(VirtioVsockDevice.TransmitQueue);
        queue.WaitUsed();
    }

    private void PostAllReceiveBuffers()
    {
        var queue = _driver.Queues[VirtioVsockDevice.ReceiveQueue];
        foreach (var at in _rx)
        {
            queue.AddChain((at, VsockHeader.Size + 4096, true));
        }

        _driver.Notify(VirtioVsockDevice.ReceiveQueue);
    }

    private static (Socket, Socket) SocketPair()
    {
        string path = Path.Combine(Path.GetTempPath(), $"virt-vsock-bench-{Guid.NewGuid():N}.sock");
        using var listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        listener.Bind(new UnixDomainSocketEndPoint(path));
        listener.Listen(1);
        var a = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        a.Connect(new UnixDomainSocketEndPoint(path));
        var b = listener.Accept();
        File.Delete(path);
        return (a, b);
    }

    private static void ReceiveExactly(Socket socket, byte[] buffer)
    {
        int got = 0;
        while (got < buffer.Length)
        {
            got += socket.Receive(buffer.AsSpan(got));
        }
    }
}
