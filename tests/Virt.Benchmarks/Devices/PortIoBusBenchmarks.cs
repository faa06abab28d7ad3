using BenchmarkDotNet.Attributes;
using Virt.Devices;

namespace Virt.Benchmarks.Devices;

/// <summary>Cost of dispatching one guest port access through <see cref="PortIoBus"/>, against calling the device directly.</summary>
[SimpleJob(warmupCount: 2, iterationCount: 5)]
[MemoryDiagnoser]
public class PortIoBusBenchmarks
{
    private const ushort Port = 0x3FF; // COM1 scratch register

    private readonly byte[] _data = new byte[1];
    private Serial16550 _uart = null!;
    private IPortIoDevice _device = null!;
    private PortIoBus _busWithUartOnly = null!;
    private PortIoBus _platformBus = null!;

    [GlobalSetup]
    public void Setup()
    {
        _uart = new Serial16550(null, Stream.Null);
        _device = _uart;
        _busWithUartOnly = new PortIoBus();
        _busWithUartOnly.Register(Serial16550.Com1Port, Serial16550.PortCount, _uart, "com1");

        // A bus shaped like a Linux guest's: 32 ranges, so the lookup is a real binary search.
        _platformBus = new PortIoBus();
        _platformBus.Register(Serial16550.Com1Port, Serial16550.PortCount, _uart, "com1");
        for (int i = 0; i < 31; i++)
        {
            _platformBus.Register((ushort)(0x1000 + (i * 0x10)), 8, new Serial16550(null, Stream.Null), $"dev{i}");
        }
    }

    [Benchmark(Baseline = true)]
    public byte DirectDeviceRead()
    {
        _device.Read(Port - Serial16550.Com1Port, _data);
        return _data[0];
    }

    [Benchmark]
    public byte BusRead_one_device()
    {
        _busWithUartOnly.Read(Port, _data);
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
}
