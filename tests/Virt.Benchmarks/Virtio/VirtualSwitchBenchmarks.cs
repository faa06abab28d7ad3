using BenchmarkDotNet.Attributes;
using Virt.Devices;
using Virt.Devices.Virtio;
using Virt.Memory;
using Virt.Network;
using Virt.Testing.Virtio;

namespace Virt.Benchmarks.Virtio;

/// <summary>
/// Frames per second through the virtual switch: port to port (learned unicast), and guest to guest through two
/// virtio-net devices (TX chain, switch, RX buffer), against copying the frame once (the least any path must do).
/// Each invocation moves <see cref="Frames"/> frames; BenchmarkDotNet reports time per frame.
/// </summary>
[Config(typeof(InProcessShortJob))]
public class VirtualSwitchBenchmarks
{
    private const int Frames = 1000;
    private static readonly MacAddress A = MacAddress.Parse("02:00:00:00:00:0a");
    private static readonly MacAddress B = MacAddress.Parse("02:00:00:00:00:0b");

    private VirtualNetworkPort _portA = null!;
    private VirtualNetworkPort _portB = null!;
    private byte[] _frame = null!;
    private byte[] _sink = null!;
    private long _received;
    private GuestMemory _ramA = null!, _ramB = null!;
    private MockVirtioDriver _driverA = null!, _driverB = null!;
    private GuestAddress _txHeader, _txFrame;
    private GuestAddress[] _rxBuffers = null!;

    /// <summary>Frame size in bytes.</summary>
    [Params(64, 1514)]
    public int FrameSize { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        var network = new VirtualNetwork("bench");
        network.Start();
        _portA = network.Attach();
        _portB = network.Attach();
        _frame = new byte[FrameSize];
        B.CopyTo(_frame);
        A.CopyTo(_frame.AsSpan(6));
        _sink = new byte[FrameSize];
        _portB.Attach(f =>
        {
            _received++;
            return true;
        });

        // Teach the switch where B is, so frames to it are unicast.
        var fromB = (byte[])_frame.Clone();
        A.CopyTo(fromB);
        B.CopyTo(fromB.AsSpan(6));
        _portB.SendAsync(fromB).AsTask().GetAwaiter().GetResult();

        var net2 = new VirtualNetwork("bench-virtio");
        net2.Start();
        (_ramA, _driverA) = Guest(net2.Attach(), A);
        (_ramB, _driverB) = Guest(net2.Attach(), B);
        _txHeader = _driverA.Allocate(12);
        _txFrame = _driverA.Allocate((uint)FrameSize);
        _ramA.Write(_txHeader, new byte[12]);
        _ramA.Write(_txFrame, _frame);
        _rxBuffers = Enumerable.Range(0, 256).Select(_ => _driverB.Allocate(1526)).ToArray();
        foreach (var b in _rxBuffers)
        {
            _driverB.Queues[0].AddChain((b, 1526, true));
        }

        _driverB.Notify(0);

        // B announces itself so A's frames are unicast to it.
        var announceHeader = _driverB.Allocate(12);
        var announce = _driverB.Allocate((uint)FrameSize);
        _ramB.Write(announceHeader, new byte[12]);
        _ramB.Write(announce, fromB);
        _driverB.Queues[1].AddChain((announceHeader, 12, false), (announce, (uint)FrameSize, false));
        _driverB.Notify(1);
        _driverB.Queues[1].WaitUsed();
        _driverA.Queues[0].AddChain((_driverA.Allocate(1526), 1526, true));
        _driverA.Notify(0);
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _driverA.WriteRegister(0x70, 0);
        _driverB.WriteRegister(0x70, 0);
        _ramA.Dispose();
        _ramB.Dispose();
    }

    [Benchmark(Baseline = true, OperationsPerInvoke = Frames)]
    public void CopyFrame()
    {
        for (int i = 0; i < Frames; i++)
        {
            _frame.CopyTo(_sink, 0);
        }
    }

    [Benchmark(OperationsPerInvoke = Frames)]
    public long SwitchPortToPort()
    {
        for (int i = 0; i < Frames; i++)
        {
            _portA.SendAsync(_frame).AsTask().GetAwaiter().GetResult();
        }

        return _received;
    }

    [Benchmark(OperationsPerInvoke = Frames)]
    public void VirtioNetGuestToGuest()
    {
        var tx = _driverA.Queues[1];
        var rx = _driverB.Queues[0];
        for (int i = 0; i < Frames; i++)
        {
            tx.AddChain((_txHeader, 12, false), (_txFrame, (uint)FrameSize, false));
            _driverA.Notify(1);
            var used = rx.WaitUsed();
            tx.WaitUsed();

            // Give the buffer back so the receive queue never runs dry.
            rx.AddChain((_rxBuffers[used.Id % (uint)_rxBuffers.Length], 1526, true));
        }

        _driverB.Notify(0);
    }

    private static (GuestMemory, MockVirtioDriver) Guest(INetworkBackend backend, MacAddress mac)
    {
        var ram = GuestMemory.CreateRam(4 << 20);
        var transport = new VirtioMmioTransport(new VirtioNetDevice(backend, mac), ram, NullInterruptLine.Instance);
        var driver = new MockVirtioDriver(transport, ram, new GuestAddress(0x1000), new GuestAddress(0x40000));
        driver.Initialize(queueSize: 256);
        return (ram, driver);
    }
}
