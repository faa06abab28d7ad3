using System.Buffers.Binary;
using System.Collections.Generic;

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
}

internal static class SyntheticElf
{
    /// <summary>
    /// An ELF executable with one PT_LOAD segment (code bytes 0x90.., then bss) at <paramref name="loadAddress"/>
    /// and, optionally, a PT_NOTE with the Xen PVH entry note.
    /// </summary>
    public static byte[] Build(bool is64, ulong loadAddress = 0x100000, ulong entry = 0x100010, uint? pvhEntry = 0x100020,
        int codeSize = 0x100, ulong bssSize = 0x1000, byte[]? prefix = null)
    {
        int ehsize = is64 ? 64 : 52;
        int phentsize = is64 ? 56 : 32;
        int phnum = pvhEntry is null ? 1 : 2;
        var note = new List<byte>();
        if (pvhEntry is uint pe)
        {
            note.AddRange(BitConverter.GetBytes(4u));                 // namesz "Xen\0"
            note.AddRange(BitConverter.GetBytes(is64 ? 8u : 4u));     // descsz
            note.AddRange(BitConverter.GetBytes(18u));                // XEN_ELFNOTE_PHYS32_ENTRY
            note.AddRange("Xen\0"u8.ToArray());
            note.AddRange(is64 ? BitConverter.GetBytes((ulong)pe) : BitConverter.GetBytes(pe));
        }

        int phoff = ehsize;
        int noteOff = phoff + (phentsize * phnum);
        int codeOff = (noteOff + note.Count + 0xFFF) & ~0xFFF;
        if (prefix is not null)
        {
            codeOff = Math.Max(codeOff, 0x1000);
        }

        var image = new byte[codeOff + codeSize];
        var s = image.AsSpan();
        s[0] = 0x7F; s[1] = (byte)'E'; s[2] = (byte)'L'; s[3] = (byte)'F';
        s[4] = is64 ? (byte)2 : (byte)1;
        s[5] = 1;
        s[6] = 1;
        BinaryPrimitives.WriteUInt16LittleEndian(s[16..], 2);
        BinaryPrimitives.WriteUInt16LittleEndian(s[18..], is64 ? (ushort)0x3E : (ushort)3);
        BinaryPrimitives.WriteUInt32LittleEndian(s[20..], 1);
        if (is64)
        {
            BinaryPrimitives.WriteUInt64LittleEndian(s[24..], entry);
            BinaryPrimitives.WriteUInt64LittleEndian(s[32..], (ulong)phoff);
            BinaryPrimitives.WriteUInt16LittleEndian(s[52..], (ushort)ehsize);
            BinaryPrimitives.WriteUInt16LittleEndian(s[54..], (ushort)phentsize);
            BinaryPrimitives.WriteUInt16LittleEndian(s[56..], (ushort)phnum);
        }
        else
        {
            BinaryPrimitives.WriteUInt32LittleEndian(s[24..], (uint)entry);
            BinaryPrimitives.WriteUInt32LittleEndian(s[28..], (uint)phoff);
            BinaryPrimitives.WriteUInt16LittleEndian(s[40..], (ushort)ehsize);
            BinaryPrimitives.WriteUInt16LittleEndian(s[42..], (ushort)phentsize);
            BinaryPrimitives.WriteUInt16LittleEndian(s[44..], (ushort)phnum);
        }

        void Phdr(int index, uint type, ulong offset, ulong addr, ulong filesz, ulong memsz)
        {
            var p = image.AsSpan().Slice(phoff + (index * phentsize), phentsize);
            BinaryPrimitives.WriteUInt32LittleEndian(p, type);
            if (is64)
            {
                BinaryPrimitives.WriteUInt32LittleEndian(p[4..], 5);
                BinaryPrimitives.WriteUInt64LittleEndian(p[8..], offset);
                BinaryPrimitives.WriteUInt64LittleEndian(p[16..], addr);
                BinaryPrimitives.WriteUInt64LittleEndian(p[24..], addr);
                BinaryPrimitives.WriteUInt64LittleEndian(p[32..], filesz);
                BinaryPrimitives.WriteUInt64LittleEndian(p[40..], memsz);
            }
            else
            {
                BinaryPrimitives.WriteUInt32LittleEndian(p[4..], (uint)offset);
                BinaryPrimitives.WriteUInt32LittleEndian(p[8..], (uint)addr);
                BinaryPrimitives.WriteUInt32LittleEndian(p[12..], (uint)addr);
                BinaryPrimitives.WriteUInt32LittleEndian(p[16..], (uint)filesz);
                BinaryPrimitives.WriteUInt32LittleEndian(p[20..], (uint)memsz);
            }
        }

        Phdr(0, 1, (ulong)codeOff, loadAddress, (ulong)codeSize, (ulong)codeSize + bssSize);
        if (pvhEntry is not null)
        {
            Phdr(1, 4, (ulong)noteOff, 0, (ulong)note.Count, (ulong)note.Count);
            note.ToArray().CopyTo(s[noteOff..]);
        }

        s.Slice(codeOff, codeSize).Fill(0x90);
        prefix?.CopyTo(s[0x800..]);
        return image;
    }

    /// <summary>A Multiboot header: magic, flags, checksum, and the five address fields when <paramref name="addressFields"/> is given.</summary>
    public static byte[] MultibootHeader(uint flags, (uint Header, uint Load, uint LoadEnd, uint BssEnd, uint Entry)? addressFields = null)
    {
        var h = new List<byte>();
        h.AddRange(BitConverter.GetBytes(0x1BADB002u));
        h.AddRange(BitConverter.GetBytes(flags));
        h.AddRange(BitConverter.GetBytes(unchecked(0u - 0x1BADB002u - flags)));
        if (addressFields is { } a)
        {
            h.AddRange(BitConverter.GetBytes(a.Header));
            h.AddRange(BitConverter.GetBytes(a.Load));
            h.AddRange(BitConverter.GetBytes(a.LoadEnd));
            h.AddRange(BitConverter.GetBytes(a.BssEnd));
            h.AddRange(BitConverter.GetBytes(a.Entry));
        }

        return [.. h];
    }
}
