namespace Virt.Devices.Virtio;

/// <summary>What the device does with a packet the driver sent.</summary>
internal enum VsockVerdict
{
    /// <summary>A well-formed packet for the connection state machine.</summary>
    Accept,

    /// <summary>Malformed or not addressed to this device: dropped without an answer (an answer could not be addressed or would be spoofed).</summary>
    Drop,

    /// <summary>Well addressed but not acceptable (unknown op or type, payload on a control op): answered with RST.</summary>
    Reset,
}

/// <summary>The outcome of parsing one driver packet: the verdict, the header (when there was one) and why a packet was refused.</summary>
internal readonly record struct VsockParseResult(VsockVerdict Verdict, VsockHeader Header, string? Reason);

/// <summary>
/// Checks packets the driver put on the transmit queue (virtio 1.2, section 5.10.6) before the connection state
/// machine sees them. The guest is hostile: every field is checked against what the chain holds and what this
/// device is; nothing here throws.
/// </summary>
internal static class VsockPacketParser
{
    /// <summary>
    /// Parses the header at the start of <paramref name="readable"/> (the first bytes of the chain's device-readable
    /// part) given that the chain holds <paramref name="readableLength"/> readable bytes in all.
    /// </summary>
    /// <param name="readable">At least the first <see cref="VsockHeader.Size"/> readable bytes, or all of them when fewer.</param>
    /// <param name="readableLength">The chain's total device-readable length.</param>
    /// <param name="guestCid">The guest's context id: the only acceptable source.</param>
    public static VsockParseResult Parse(ReadOnlySpan<byte> readable, long readableLength, ulong guestCid)
    {
        if (readableLength < VsockHeader.Size || readable.Length < VsockHeader.Size)
        {
            return Refuse(VsockVerdict.Drop, default, $"a packet of {readableLength} readable byte(s) is shorter than the {VsockHeader.Size}-byte header");
        }

        var h = VsockHeader.Read(readable);
        if (h.Length > VsockProtocol.MaxPayload)
        {
            return Refuse(VsockVerdict.Drop, h, $"payload length {h.Length} exceeds the {VsockProtocol.MaxPayload}-byte limit");
        }

        if (VsockHeader.Size + (long)h.Length > readableLength)
        {
            return Refuse(VsockVerdict.Drop, h, $"payload length {h.Length} does not fit the {readableLength - VsockHeader.Size} byte(s) after the header");
        }

        if (h.SourceCid != guestCid)
        {
            return Refuse(VsockVerdict.Drop, h, $"source CID {h.SourceCid} is not the guest's CID {guestCid}");
        }

        if (h.DestinationCid != VsockProtocol.HostCid)
        {
            return Refuse(VsockVerdict.Drop, h, $"destination CID {h.DestinationCid} is not the host (CID {VsockProtocol.HostCid})");
        }

        return CheckOp(h);
    }

    private static VsockParseResult CheckOp(VsockHeader h)
    {
        if (h.Op is 0 or > VsockProtocol.OpCreditRequest)
        {
            return Refuse(VsockVerdict.Reset, h, $"unknown op {h.Op}");
        }

        if (h.Type != VsockProtocol.TypeStream)
        {
            // An RST is never answered, whatever its type.
            return Refuse(h.Op == VsockProtocol.OpRst ? VsockVerdict.Drop : VsockVerdict.Reset, h, $"socket type {h.Type} is not a stream (the device offers no SEQPACKET)");
        }

        if (h.Op != VsockProtocol.OpRw && h.Length != 0)
        {
            return Refuse(h.Op == VsockProtocol.OpRst ? VsockVerdict.Drop : VsockVerdict.Reset, h, $"{VsockProtocol.OpName(h.Op)} carries a {h.Length}-byte payload");
        }

        if (h.Op == VsockProtocol.OpShutdown && (h.Flags & ~VsockProtocol.ShutdownBoth) != 0)
        {
            return Refuse(VsockVerdict.Reset, h, $"SHUTDOWN with unknown flags 0x{h.Flags:x}");
        }

        return new VsockParseResult(VsockVerdict.Accept, h, null);
    }

    private static VsockParseResult Refuse(VsockVerdict verdict, VsockHeader header, string reason) => new(verdict, header, reason);
}
