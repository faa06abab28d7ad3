using Virt.Memory;

namespace Virt.Boot;

/// <summary>
/// A device of the machine's own to announce in the DSDT under an ACPI or PNP ID of the user's choice, so a guest
/// driver finds it by that ID with its ports, MMIO window and interrupt (Linux makes it a platform device named
/// <c>HWID:nn</c>, with those resources, that a driver with a matching ACPI match table binds).
/// </summary>
/// <param name="HardwareId">
/// The <c>_HID</c>: an ACPI ID (four upper-case letters or digits and four hexadecimal digits, such as
/// <c>VIRT0001</c>) or a PNP ID (three upper-case letters and four hexadecimal digits, such as <c>PNP0C0F</c>).
/// </param>
/// <param name="Port">The first I/O port, or <see langword="null"/> for none.</param>
/// <param name="PortCount">How many ports (0 for none).</param>
/// <param name="MmioAddress">The MMIO window, or <see langword="null"/> for none.</param>
/// <param name="MmioSize">The window's size in bytes (0 for none).</param>
/// <param name="Gsi">The interrupt (GSI 0-23, level-triggered, active high), or <see langword="null"/> for none.</param>
public readonly record struct AcpiDevice(string HardwareId, ushort? Port, ushort PortCount, GuestAddress? MmioAddress, ulong MmioSize, int? Gsi)
{
    /// <summary>Whether <paramref name="id"/> is a valid ACPI ID (<c>NNNN####</c>) or PNP ID (<c>AAA####</c>) for a <c>_HID</c>.</summary>
    /// <param name="id">The identifier to check.</param>
    /// <returns>True when the ACPI specification allows it as a hardware ID.</returns>
    public static bool IsValidHardwareId(string? id)
    {
        if (id is null || id.Length is not (7 or 8))
        {
            return false;
        }

        int prefix = id.Length - 4;
        for (int i = 0; i < prefix; i++)
        {
            char c = id[i];
            bool letter = c is >= 'A' and <= 'Z';
            bool digit = c is >= '0' and <= '9';
            if (!(letter || (digit && prefix == 4)))
            {
                return false; // a PNP vendor ID is three letters; an ACPI vendor ID may have digits
            }
        }

        for (int i = prefix; i < id.Length; i++)
        {
            if (!char.IsAsciiHexDigitUpper(id[i]))
            {
                return false;
            }
        }

        return true;
    }
}
