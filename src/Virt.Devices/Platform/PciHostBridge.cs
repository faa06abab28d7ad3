using System.Buffers.Binary;
using Virt.Snapshots;

namespace Virt.Devices;

/// <summary>
/// A PCI host bridge with nothing behind it, reached through configuration mechanism #1 at ports 0xCF8-0xCFF: the
/// CONFIG_ADDRESS register at 0xCF8 (32-bit accesses only; narrower ones there are ordinary I/O and ignored) and the
/// CONFIG_DATA window at 0xCFC-0xCFF (any width). Bus 0, device 0, function 0 is the bridge itself, an Intel 440FX
/// host bridge header (vendor 0x8086, device 0x1237, class 0x060000); every other function reads as absent (all ones).
/// </summary>
/// <remarks>
/// <para>It gives a Linux guest a working configuration access method, so the kernel's probe ("PCI: Using
/// configuration type 1") succeeds instead of failing with "PCI: Fatal: No config space access function found".
/// The header is read-only: there are no BARs to size, and a write to the command register changes nothing the
/// machine could act on.</para>
/// <para>The guest is hostile: every address it writes is latched as the register would hold it (the enable bit,
/// bus, device, function and dword-aligned register), and any combination reads either the bridge's header or all
/// ones. Nothing is allocated per access.</para>
/// </remarks>
public sealed class PciHostBridge : IPortIoDevice, IPersistentState
{
    /// <summary>The first port: CONFIG_ADDRESS at 0xCF8, CONFIG_DATA at 0xCFC.</summary>
    public const ushort BasePort = 0xCF8;

    /// <summary>The number of ports, 0xCF8-0xCFF.</summary>
    public const ushort PortCount = 8;

    /// <summary>The bits of CONFIG_ADDRESS a write keeps: enable (31), bus (23-16), device (15-11), function (10-8) and register (7-2).</summary>
    private const uint AddressMask = 0x80FF_FFFC;

    private const uint EnableBit = 0x8000_0000;

    private static readonly byte[] Header = BuildHeader();

    private readonly Lock _lock = new();
    private uint _address;

    /// <inheritdoc />
    public string StateName => "pci-host-bridge";

    /// <inheritdoc />
    public int StateVersion => 1;

    /// <summary>The value of CONFIG_ADDRESS as the guest last wrote it (masked to the bits the register keeps).</summary>
    public uint ConfigAddress
    {
        get
        {
            lock (_lock)
            {
                return _address;
            }
        }
    }

    /// <inheritdoc />
    public void Read(ushort offset, Span<byte> data)
    {
        lock (_lock)
        {
            if (offset == 0 && data.Length == 4)
            {
                BinaryPrimitives.WriteUInt32LittleEndian(data, _address);
                return;
            }

            if (offset < 4)
            {
                data.Fill(0xFF); // narrower accesses to 0xCF8-0xCFB decode to nothing
                return;
            }

            if ((_address & EnableBit) == 0 || (_address & 0x00FF_FF00) != 0)
            {
                data.Fill(0xFF); // disabled, or a bus/device/function other than 00:00.0: no device answers
                return;
            }

            int register = (int)(_address & 0xFC) + (offset - 4);
            for (int i = 0; i < data.Length; i++)
            {
                int at = register + i;
                data[i] = at < Header.Length ? Header[at] : (byte)0;
            }
        }
    }

    /// <inheritdoc />
    public void Write(ushort offset, ReadOnlySpan<byte> data)
    {
        if (offset == 0 && data.Length == 4)
        {
            lock (_lock)
            {
                _address = BinaryPrimitives.ReadUInt32LittleEndian(data) & AddressMask;
            }
        }

        // Writes to CONFIG_DATA reach a read-only header; narrower writes to 0xCF8-0xCFB decode to nothing.
    }

    /// <inheritdoc />
    public void SaveState(StateWriter writer)
    {
        ArgumentNullException.ThrowIfNull(writer);
        writer.WriteUInt32(ConfigAddress);
    }

    /// <inheritdoc />
    public void RestoreState(ref StateReader reader, int version)
    {
        StateFields.CheckVersion(ref reader, version, StateVersion);
        uint address = reader.ReadUInt32("config-address");
        StateFields.Require(ref reader, (address & ~AddressMask) == 0, "config-address", $"is 0x{address:x8}, which has bits the register does not keep (mask 0x{AddressMask:x8}).");
        lock (_lock)
        {
            _address = address;
        }
    }

    /// <summary>The bridge's type 0 configuration header (the first 64 bytes; the rest of the 256 read as zero).</summary>
    private static byte[] BuildHeader()
    {
        var header = new byte[64];
        BinaryPrimitives.WriteUInt16LittleEndian(header.AsSpan(0x00), 0x8086); // vendor: Intel
        BinaryPrimitives.WriteUInt16LittleEndian(header.AsSpan(0x02), 0x1237); // device: 440FX host bridge
        header[0x08] = 0x02;                                                    // revision
        header[0x0A] = 0x00;                                                    // subclass: host bridge
        header[0x0B] = 0x06;                                                    // class: bridge
        header[0x0E] = 0x00;                                                    // header type 0, single function
        return header;
    }
}
