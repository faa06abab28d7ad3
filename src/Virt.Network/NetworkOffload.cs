using System.Buffers.Binary;

namespace Virt.Network;

/// <summary>
/// The offload part of a frame's virtio-net header (virtio 1.2, 5.1.6) as it crosses between a
/// <see cref="VirtioNetDevice"/> and a backend that takes offloaded frames (<see cref="IOffloadNetworkBackend"/>).
/// </summary>
/// <param name="Flags"><see cref="NeedsChecksum"/> or <see cref="DataValid"/>.</param>
/// <param name="GsoType"><see cref="GsoNone"/>, <see cref="GsoTcp4"/> or <see cref="GsoTcp6"/>.</param>
/// <param name="HeaderLength">Bytes of Ethernet, IP and TCP headers (a hint from a guest, exact from the stack).</param>
/// <param name="SegmentSize">For a segmentation offload, the payload bytes per segment on the wire (the MSS).</param>
/// <param name="ChecksumStart">With <see cref="NeedsChecksum"/>: where the checksummed part starts.</param>
/// <param name="ChecksumOffset">With <see cref="NeedsChecksum"/>: where the checksum lies, from <paramref name="ChecksumStart"/>.</param>
internal readonly record struct FrameOffload(byte Flags, byte GsoType, ushort HeaderLength, ushort SegmentSize, ushort ChecksumStart, ushort ChecksumOffset)
{
    /// <summary>The transport checksum is partial: the pseudo-header sum is in place, the rest is to be added.</summary>
    public const byte NeedsChecksum = 1;

    /// <summary>The frame's checksums were checked (or the frame never left the host): no need to check them again.</summary>
    public const byte DataValid = 2;

    public const byte GsoNone = 0;
    public const byte GsoTcp4 = 1;
    public const byte GsoUdp = 3;
    public const byte GsoTcp6 = 4;
    public const byte GsoEcn = 0x80;

    /// <summary>A complete frame with every checksum in place.</summary>
    public static FrameOffload None => default;

    /// <summary>Whether the frame's transport checksum need not (or cannot yet) be checked.</summary>
    public bool ChecksumTrusted => (Flags & (NeedsChecksum | DataValid)) != 0;

    /// <summary>Reads the first ten bytes of a virtio_net_hdr (little-endian fields).</summary>
    public static FrameOffload Read(ReadOnlySpan<byte> header) => new(
        header[0], header[1],
        BinaryPrimitives.ReadUInt16LittleEndian(header[2..]),
        BinaryPrimitives.ReadUInt16LittleEndian(header[4..]),
        BinaryPrimitives.ReadUInt16LittleEndian(header[6..]),
        BinaryPrimitives.ReadUInt16LittleEndian(header[8..]));

    /// <summary>Writes the first ten bytes of a virtio_net_hdr.</summary>
    public void Write(Span<byte> header)
    {
        header[0] = Flags;
        header[1] = GsoType;
        BinaryPrimitives.WriteUInt16LittleEndian(header[2..], HeaderLength);
        BinaryPrimitives.WriteUInt16LittleEndian(header[4..], SegmentSize);
        BinaryPrimitives.WriteUInt16LittleEndian(header[6..], ChecksumStart);
        BinaryPrimitives.WriteUInt16LittleEndian(header[8..], ChecksumOffset);
    }
}

/// <summary>Offloads a backend takes from the guest, or the guest takes from a backend.</summary>
[Flags]
internal enum NetworkOffloads
{
    None = 0,

    /// <summary>Frames whose TCP/UDP checksum is partial (<see cref="FrameOffload.NeedsChecksum"/>).</summary>
    Checksum = 1,

    /// <summary>TCP over IPv4 segments larger than the MTU, cut into <see cref="FrameOffload.SegmentSize"/> on a wire.</summary>
    Tcp4Segmentation = 2,

    /// <summary>TCP over IPv6 segments larger than the MTU.</summary>
    Tcp6Segmentation = 4,
}

/// <summary>Takes a frame for the guest with its offload header; false when the guest had no buffer for it.</summary>
internal delegate bool OffloadReceiver(ReadOnlyMemory<byte> frame, in FrameOffload offload);

/// <summary>
/// A backend that ends the guest's traffic itself (the user-mode network): it takes frames with partial checksums and
/// larger than the MTU from the guest, since it never puts them on a wire, and it may hand the guest large segments
/// when the guest agreed to take them. A <see cref="VirtioNetDevice"/> offers the guest checksum and segmentation
/// offloads only over such a backend.
/// </summary>
internal interface IOffloadNetworkBackend : INetworkBackend
{
    /// <summary>What the backend takes from the guest.</summary>
    NetworkOffloads TransmitOffloads { get; }

    /// <summary>
    /// Sends a frame from the guest whose header the NIC has checked: a partial checksum lies inside the frame at
    /// the transport header, a segmentation offload is one the backend takes and covers a TCP segment.
    /// </summary>
    void Send(ReadOnlySpan<byte> frame, in FrameOffload offload);

    /// <summary>The guest has no more frames queued for now: acknowledgments held back to cover several frames go out.</summary>
    void EndOfBatch();

    /// <summary>Registers the receiver and what the guest takes (set again whenever the guest renegotiates).</summary>
    void AttachOffload(OffloadReceiver receiver, NetworkOffloads guestTakes);

    /// <summary>Tells the backend what the guest takes now (after a reset and a new negotiation).</summary>
    void SetGuestOffloads(NetworkOffloads guestTakes);
}
