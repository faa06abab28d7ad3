using System.Buffers.Binary;

namespace Virt.Devices.Virtio;

/// <summary>
/// The header of a virtio-vsock packet (virtio 1.2, section 5.10.6: <c>struct virtio_vsock_hdr</c>, 44 bytes,
/// little-endian), in both directions.
/// </summary>
internal readonly record struct VsockHeader(
    ulong SourceCid,
    ulong DestinationCid,
    uint SourcePort,
    uint DestinationPort,
    uint Length,
    ushort Type,
    ushort Op,
    uint Flags,
    uint BufferAllocation,
    uint ForwardCount)
{
    /// <summary>Size of the header in bytes.</summary>
    public const int Size = 44;

    /// <summary>Reads a header from the first <see cref="Size"/> bytes of <paramref name="bytes"/>.</summary>
    public static VsockHeader Read(ReadOnlySpan<byte> bytes) => new(
        BinaryPrimitives.ReadUInt64LittleEndian(bytes),
        BinaryPrimitives.ReadUInt64LittleEndian(bytes[8..]),
        BinaryPrimitives.ReadUInt32LittleEndian(bytes[16..]),
        BinaryPrimitives.ReadUInt32LittleEndian(bytes[20..]),
        BinaryPrimitives.ReadUInt32LittleEndian(bytes[24..]),
        BinaryPrimitives.ReadUInt16LittleEndian(bytes[28..]),
        BinaryPrimitives.ReadUInt16LittleEndian(bytes[30..]),
        BinaryPrimitives.ReadUInt32LittleEndian(bytes[32..]),
        BinaryPrimitives.ReadUInt32LittleEndian(bytes[36..]),
        BinaryPrimitives.ReadUInt32LittleEndian(bytes[40..]));

    /// <summary>Writes the header into the first <see cref="Size"/> bytes of <paramref name="bytes"/>.</summary>
    public void Write(Span<byte> bytes)
    {
        BinaryPrimitives.WriteUInt64LittleEndian(bytes, SourceCid);
        BinaryPrimitives.WriteUInt64LittleEndian(bytes[8..], DestinationCid);
        BinaryPrimitives.WriteUInt32LittleEndian(bytes[16..], SourcePort);
        BinaryPrimitives.WriteUInt32LittleEndian(bytes[20..], DestinationPort);
        BinaryPrimitives.WriteUInt32LittleEndian(bytes[24..], Length);
        BinaryPrimitives.WriteUInt16LittleEndian(bytes[28..], Type);
        BinaryPrimitives.WriteUInt16LittleEndian(bytes[30..], Op);
        BinaryPrimitives.WriteUInt32LittleEndian(bytes[32..], Flags);
        BinaryPrimitives.WriteUInt32LittleEndian(bytes[36..], BufferAllocation);
        BinaryPrimitives.WriteUInt32LittleEndian(bytes[40..], ForwardCount);
    }
}

/// <summary>virtio-vsock constants (virtio 1.2, section 5.10).</summary>
internal static class VsockProtocol
{
    /// <summary>The host's context id (VMADDR_CID_HOST).</summary>
    public const ulong HostCid = 2;

    /// <summary>VIRTIO_VSOCK_TYPE_STREAM: a connection-oriented byte stream (the only type this device offers).</summary>
    public const ushort TypeStream = 1;

    /// <summary>The largest payload of one packet the device accepts from the driver (Linux sends at most 64 KiB).</summary>
    public const int MaxPayload = 64 * 1024;

    /// <summary>VIRTIO_VSOCK_OP_REQUEST: open a connection.</summary>
    public const ushort OpRequest = 1;

    /// <summary>VIRTIO_VSOCK_OP_RESPONSE: accept a connection.</summary>
    public const ushort OpResponse = 2;

    /// <summary>VIRTIO_VSOCK_OP_RST: refuse or abort a connection.</summary>
    public const ushort OpRst = 3;

    /// <summary>VIRTIO_VSOCK_OP_SHUTDOWN: the sender stops receiving and/or sending (<see cref="ShutdownReceive"/>, <see cref="ShutdownSend"/>).</summary>
    public const ushort OpShutdown = 4;

    /// <summary>VIRTIO_VSOCK_OP_RW: stream data.</summary>
    public const ushort OpRw = 5;

    /// <summary>VIRTIO_VSOCK_OP_CREDIT_UPDATE: the sender's buf_alloc and fwd_cnt changed.</summary>
    public const ushort OpCreditUpdate = 6;

    /// <summary>VIRTIO_VSOCK_OP_CREDIT_REQUEST: asks the receiver for a credit update.</summary>
    public const ushort OpCreditRequest = 7;

    /// <summary>SHUTDOWN flag: the sender will receive no more data.</summary>
    public const uint ShutdownReceive = 1;

    /// <summary>SHUTDOWN flag: the sender will send no more data.</summary>
    public const uint ShutdownSend = 2;

    /// <summary>Both SHUTDOWN flags.</summary>
    public const uint ShutdownBoth = ShutdownReceive | ShutdownSend;

    /// <summary>The name of an op for log messages.</summary>
    public static string OpName(ushort op) => op switch
    {
        OpRequest => "REQUEST",
        OpResponse => "RESPONSE",
        OpRst => "RST",
        OpShutdown => "SHUTDOWN",
        OpRw => "RW",
        OpCreditUpdate => "CREDIT_UPDATE",
        OpCreditRequest => "CREDIT_REQUEST",
        _ => $"op {op}",
    };
}
