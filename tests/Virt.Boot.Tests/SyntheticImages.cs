using System.Buffers.Binary;

namespace Virt.Boot.Tests;

/// <summary>Builds small kernel images with correct headers, for the loader tests.</summary>
internal static class SyntheticImages
{
    /// <summary>A bzImage with 4 setup sectors and a protected-mode part of <paramref name="payloadSize"/> bytes whose first byte is 0xE9.</summary>
    public static byte[] BzImage(
        int payloadSize = 0x2000,
        ushort version = 0x020F,
        bool relocatable = true,
        ulong prefAddress = 0x1000000,
        uint initSize = 0x40000,
        uint initrdAddrMax = 0x7FFFFFFF,
        uint cmdlineSize = 2047,
        ushort xloadflags = 0x3,
        byte loadflags = 0x01,
        int setupSects = 4)
    {
        int kernelOffset = (setupSects == 0 ? 5 : setupSects + 1) * 512;
        var image = new byte[kernelOffset + payloadSize];
        var s = image.AsSpan();
        s[0x1F1] = (byte)setupSects;
        BinaryPrimitives.WriteUInt32LittleEndian(s[0x1F4..], (uint)(payloadSize / 16));
        BinaryPrimitives.WriteUInt16LittleEndian(s[0x1FE..], 0xAA55);
        s[0x200] = 0xEB; // jmp short to the end of the header
        s[0x201] = 0x6A;
        BinaryPrimitives.WriteUInt32LittleEndian(s[0x202..], 0x53726448);
        BinaryPrimitives.WriteUInt16LittleEndian(s[0x206..], version);
        s[0x211] = loadflags;
        BinaryPrimitives.WriteUInt32LittleEndian(s[0x214..], 0x100000);
        BinaryPrimitives.WriteUInt32LittleEndian(s[0x22C..], initrdAddrMax);
        BinaryPrimitives.WriteUInt32LittleEndian(s[0x230..], 0x200000);
        s[0x234] = relocatable ? (byte)1 : (byte)0;
        s[0x235] = 21;
        BinaryPrimitives.WriteUInt16LittleEndian(s[0x236..], xloadflags);
        BinaryPrimitives.WriteUInt32LittleEndian(s[0x238..], cmdlineSize);
        BinaryPrimitives.WriteUInt64LittleEndian(s[0x258..], prefAddress);
        BinaryPrimitives.WriteUInt32LittleEndian(s[0x260..], initSize);
        s[kernelOffset] = 0xE9;
        s[^1] = 0xC3;
        return image;
    }

    /// <summary>Walks up from the test binary to the repository root (the folder with Virt.Sdk.sln).</summary>
    public static string? RepositoryRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            if (File.Exists(Path.Combine(dir.FullName, "Virt.Sdk.sln")))
            {
                return dir.FullName;
            }
        }

        return null;
    }
}
