using System.IO.Pipes;
using System.Text;
using Virt.Devices.Virtio;
using Virt.Memory;
using Virt.Testing.Virtio;
using Xunit;

namespace Virt.Devices.Tests.Virtio;

public sealed class ConsoleAndRngTests
{
    [Fact]
    public void Rng_fills_the_guest_buffer_with_random_bytes()
    {
        using var ram = GuestMemory.CreateRam(0x40000);
        var memory = new CheckedGuestMemory(ram);
        var device = new VirtioRngDevice();
        var transport = new VirtioMmioTransport(device, memory, new RecordingInterruptLine());
        var driver = new MockVirtioDriver(transport, memory, new GuestAddress(0x1000), new GuestAddress(0x20000));
        driver.Initialize();
        Assert.Equal(4u, driver.ReadRegister(0x008));

        var buffer = driver.Allocate(256);
        memory.Write(buffer, new byte[256]);
        driver.Queues[0].AddChain((buffer, 256, true));
        driver.Notify(0);
        var used = driver.Queues[0].WaitUsed();

        Assert.Equal(256u, used.Length);
        var bytes = new byte[256];
        memory.Read(buffer, bytes);
        Assert.True(bytes.Distinct().Count() > 64, "256 random bytes should hold many distinct values");
        Assert.Equal(256, device.BytesServed);
    }

    [Fact]
    public void Rate_limited_rng_still_serves_requests()
    {
        using var ram = GuestMemory.CreateRam(0x40000);
        var device = new VirtioRngDevice(bytesPerSecond: 1 << 20);
        var transport = new VirtioMmioTransport(device, ram, new RecordingInterruptLine());
        var driver = new MockVirtioDriver(transport, ram, new GuestAddress(0x1000), new GuestAddress(0x20000));
        driver.Initialize();
        for (int i = 0; i < 4; i++)
        {
            driver.Queues[0].AddChain((driver.Allocate(1024), 1024, true));
        }

        driver.Notify(0);
        for (int i = 0; i < 4; i++)
        {
            Assert.Equal(1024u, driver.Queues[0].WaitUsed().Length);
        }
    }

    [Fact]
    public async Task Console_carries_bytes_both_ways_between_guest_and_host_stream()
    {
        using var ram = GuestMemory.CreateRam(0x40000);
        var memory = new CheckedGuestMemory(ram);
        var (host, deviceSide) = DuplexPipe();
        await using var device = new VirtioConsoleDevice(deviceSide);
        var transport = new VirtioMmioTransport(device, memory, new RecordingInterruptLine());
        var driver = new MockVirtioDriver(transport, memory, new GuestAddress(0x1000), new GuestAddress(0x20000));
        driver.Initialize();
        Assert.Equal(3u, driver.ReadRegister(0x008));

        // Guest -> host.
        var hello = Encoding.ASCII.GetBytes("hello from the guest\n");
        var tx = driver.Allocate((uint)hello.Length);
        memory.Write(tx, hello);
        driver.Queues[1].AddChain((tx, (uint)hello.Length, false));
        driver.Notify(1);
        var got = new byte[hello.Length];
        await host.Reader.ReadExactlyAsync(got, TestContext.Current.CancellationToken);
        Assert.Equal(hello, got);

        // Host -> guest, sent before the guest posted a buffer: held until it does.
        var reply = Encoding.ASCII.GetBytes("hi guest");
        await host.Writer.WriteAsync(reply, TestContext.Current.CancellationToken);
        await host.Writer.FlushAsync(TestContext.Current.CancellationToken);
        var rx = driver.Allocate(64);
        driver.Queues[0].AddChain((rx, 64, true));
        driver.Notify(0);
        var received = new List<byte>();
        while (received.Count < reply.Length)
        {
            var used = driver.Queues[0].WaitUsed();
            var part = new byte[used.Length];
            memory.Read(rx, part);
            received.AddRange(part);
            if (received.Count < reply.Length)
            {
                driver.Queues[0].AddChain((rx, 64, true));
                driver.Notify(0);
            }
        }

        Assert.Equal(reply, received.ToArray());
        Assert.Equal(0, memory.Violations);
    }

    [Fact]
    public async Task Console_emergency_write_reaches_the_stream()
    {
        using var ram = GuestMemory.CreateRam(0x40000);
        var (host, deviceSide) = DuplexPipe();
        await using var device = new VirtioConsoleDevice(deviceSide);
        var transport = new VirtioMmioTransport(device, ram, new RecordingInterruptLine());
        transport.Write(0x100 + 8, new byte[] { (byte)'!', 0, 0, 0 });
        var b = new byte[1];
        await host.Reader.ReadExactlyAsync(b, TestContext.Current.CancellationToken);
        Assert.Equal((byte)'!', b[0]);
    }

    private static ((Stream Reader, Stream Writer) Host, Stream DeviceSide) DuplexPipe()
    {
        var toHost = new AnonymousPipeServerStream(PipeDirection.In);
        var fromDevice = new AnonymousPipeClientStream(PipeDirection.Out, toHost.ClientSafePipeHandle);
        var toDevice = new AnonymousPipeServerStream(PipeDirection.Out);
        var intoDevice = new AnonymousPipeClientStream(PipeDirection.In, toDevice.ClientSafePipeHandle);
        return ((toHost, toDevice), new DuplexStream(intoDevice, fromDevice));
    }

    private sealed class DuplexStream(Stream input, Stream output) : Stream
    {
        public override bool CanRead => true;
        public override bool CanSeek => false;
        public override bool CanWrite => true;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
        public override void Flush() => output.Flush();
        public override int Read(byte[] buffer, int offset, int count) => input.Read(buffer, offset, count);
        public override ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default) => input.ReadAsync(buffer, cancellationToken);
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count) => output.Write(buffer, offset, count);
        public override ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default) => output.WriteAsync(buffer, cancellationToken);
    }
}
