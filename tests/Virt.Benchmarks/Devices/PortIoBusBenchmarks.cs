using BenchmarkDotNet.Attributes;
using Virt.Devices;

namespace Virt.Benchmarks.Devices;

/// <summary>Cost of dispatching one guest port access through <see cref="PortIoBus"/>, against calling the device directly.</summary>
/// <remarks>The device does almost nothing, so the figures show the bus's own cost.</remarks>
[SimpleJob(warmupCount: 2, iterationCount: 5)]
[MemoryDiagnoser]
public class PortIoBusBenchmarks
{
    private const ushort Port = 0x3FF;
    private const ushort Base = 0x3F8;

    private readonly byte[] _data = new byte[1];
    private IPortIoDevice _device = null!;
    private PortIoBus _busWithOneDevice = null!;
    private PortIoBus _platformBus = null!;

    [GlobalSetup]
    public void Setup()
    {
        _device = new ConstantDevice();
        _busWithOneDevice = new PortIoBus();
        _busWithOneDevice.Register(Base, 8, _device, "dev");

        // A bus shaped like a Linux guest's: 32 ranges, so the lookup is a real binary search.
        _platformBus = new PortIoBus();
        _platformBus.Register(Base, 8, _device, "dev");
        for (int i = 0; i < 31; i++)
        {
            _platformBus.Register((ushort)(0x1000 + (i * 0x10)), 8, new ConstantDevice(), $"dev{i}");
        }
    }

    [Benchmark(Baseline = true)]
    public byte DirectDeviceRead()
    {
        _device.Read(Port - Base, _data);
        return _data[0];
    }

    [Benchmark]
    public byte BusRead_one_device()
    {
        _busWithOneDevice.Read(Port, _data);
        return _data[0];
    }

    [Benchmark]
    public byte BusRead_32_devices()
    {
        _platformBus.Read(Port, _data);
        return _data[0];
    }

    [Benchmark]
    public byte BusRead_unclaimed_port()
    {
        _platformBus.Read(0x80, _data);
        return _data[0];
    }

    private sealed class ConstantDevice : IPortIoDevice
    {
        public void Read(ushort offset, Span<byte> data) => data.Fill((byte)offset);

        public void Write(ushort offset, ReadOnlySpan<byte> data)
        {
        }
    }
}
