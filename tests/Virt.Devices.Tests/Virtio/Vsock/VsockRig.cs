using Virt.Devices.Virtio;
using Virt.Memory;
using Virt.Testing.Virtio;

namespace Virt.Devices.Tests.Virtio.Vsock;

/// <summary>A virtio-vsock device behind a transport and a scripted Linux-like driver: packets in, packets out.</summary>
internal sealed class VsockRig : VirtioTestRig
{
    public const uint GuestCid = 3;
    private readonly Dictionary<uint, GuestAddress> _rxBuffers = [];
    private readonly GuestAddress _txBuffer;

    public VsockRig()
        : base(new VirtioVsockDevice(GuestCid), ramSize: 0x400000, dataArea: 0x20000)
    {
        Device = (VirtioVsockDevice)Transport.Device;
        Driver.Initialize(queueSize: 64);
        _txBuffer = Driver.Allocate(VsockHeader.Size + VsockProtocol.MaxPayload + 64);
    }

    public VirtioVsockDevice Device { get; }

    public MockSplitQueue Rx => Driver.Queues[VirtioVsockDevice.ReceiveQueue];

    public MockSplitQueue Tx => Driver.Queues[VirtioVsockDevice.TransmitQueue];

    /// <summary>Gives the device <paramref name="count"/> receive buffers of 4 KiB after the header, as Linux 6.1 does.</summary>
    public void PostReceiveBuffers(int count, uint size = VsockHeader.Size + 4096)
    {
        for (int i = 0; i < count; i++)
        {
            var at = Driver.Allocate(size);
            ushort head = Rx.AddChain((at, size, true));
            _rxBuffers[head] = at;
        }

        Driver.Notify(VirtioVsockDevice.ReceiveQueue);
    }

    /// <summary>Sends one packet (header and payload in two descriptors) and waits until the device took it.</summary>
    public void Send(ushort op, uint srcPort, uint dstPort, ReadOnlySpan<byte> payload = default, uint flags = 0, uint bufAlloc = 256 * 1024, uint fwdCnt = 0, ulong srcCid = GuestCid, ulong dstCid = 2, ushort type = 1, uint? length = null)
    {
        var header = new VsockHeader(srcCid, dstCid, srcPort, dstPort, length ?? (uint)payload.Length, type, op, flags, bufAlloc, fwdCnt);
        Span<byte> bytes = stackalloc byte[VsockHeader.Size];
        header.Write(bytes);
        SendRaw(bytes, payload);
    }

    /// <summary>Sends arbitrary bytes as a header descriptor and a payload descriptor.</summary>
    public void SendRaw(ReadOnlySpan<byte> header, ReadOnlySpan<byte> payload)
    {
        Memory.Write(_txBuffer, header);
        var payloadAt = _txBuffer + (ulong)VsockHeader.Size + 32;
        Memory.Write(payloadAt, payload);
        if (payload.IsEmpty)
        {
            Tx.AddChain((_txBuffer, (uint)header.Length, false));
        }
        else
        {
            Tx.AddChain((_txBuffer, (uint)header.Length, false), (payloadAt, (uint)payload.Length, false));
        }

        Driver.Notify(VirtioVsockDevice.TransmitQueue);
        Tx.WaitUsed();
    }

    /// <summary>Waits for the next packet the device put in a receive buffer.</summary>
    public (VsockHeader Header, byte[] Payload) Receive()
    {
        var (id, length) = Rx.WaitUsed();
        var at = _rxBuffers[id];
        byte[] bytes = new byte[length];
        Memory.Read(at, bytes);
        var header = VsockHeader.Read(bytes);
        Xunit.Assert.Equal(VsockHeader.Size + (int)header.Length, (int)length);
        return (header, bytes[VsockHeader.Size..]);
    }

    /// <summary>Whether the device returned a receive buffer (without waiting).</summary>
    public bool TryReceive(out (VsockHeader Header, byte[] Payload) packet)
    {
        if (Rx.TryTakeUsed(out var used))
        {
            var at = _rxBuffers[used.Id];
            byte[] bytes = new byte[used.Length];
            Memory.Read(at, bytes);
            packet = (VsockHeader.Read(bytes), bytes[VsockHeader.Size..]);
            return true;
        }

        packet = default;
        return false;
    }

    public bool Logged(string fragment) => Logger.Messages.Any(m => m.Contains(fragment, StringComparison.Ordinal));
}
