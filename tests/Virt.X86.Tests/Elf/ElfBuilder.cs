using System.Buffers.Binary;

namespace Virt.X86.Tests.Elf;

/// <summary>A program header to write: type, flags, file range, addresses, sizes and alignment.</summary>
internal sealed record Segment(ElfSegmentType Type, ulong Offset, ulong FileSize, ulong Address = 0, ulong MemorySize = ulong.MaxValue, ElfSegmentFlags Flags = ElfSegmentFlags.Read, ulong Align = 0x1000);

/// <summary>Writes small ELF32 and ELF64 files whose header fields the tests then corrupt.</summary>
internal static class ElfBuilder
{
    /// <summary>A file of <paramref name="length"/> bytes with a header, the given program headers right after it, and <paramref name="payload"/> bytes at their offsets.</summary>
    public static byte[] Build(bool is64, Segment[] segments, int length = 0x2000, ushort type = 2, ushort machine = 62, ulong entry = 0x401000, (int Offset, byte[] Bytes)[]? payload = null)
    {
        int ehsize = is64 ? 64 : 52, phentsize = is64 ? 56 : 32;
        var f = new byte[length];
        var s = f.AsSpan();
        s[0] = 0x7F; s[1] = (byte)'E'; s[2] = (byte)'L'; s[3] = (byte)'F';
        s[4] = is64 ? (byte)2 : (byte)1;
        s[5] = 1;
        s[6] = 1;
        BinaryPrimitives.WriteUInt16LittleEndian(s[16..], type);
        BinaryPrimitives.WriteUInt16LittleEndian(s[18..], machine);
        BinaryPrimitives.WriteUInt32LittleEndian(s[20..], 1);
        if (is64)
        {
            BinaryPrimitives.WriteUInt64LittleEndian(s[24..], entry);
            BinaryPrimitives.WriteUInt64LittleEndian(s[32..], (ulong)ehsize);
            BinaryPrimitives.WriteUInt16LittleEndian(s[52..], (ushort)ehsize);
            BinaryPrimitives.WriteUInt16LittleEndian(s[54..], (ushort)phentsize);
            BinaryPrimitives.WriteUInt16LittleEndian(s[56..], (ushort)segments.Length);
        }
        else
        {
            BinaryPrimitives.WriteUInt32LittleEndian(s[24..], (uint)entry);
            BinaryPrimitives.WriteUInt32LittleEndian(s[28..], (uint)ehsize);
            BinaryPrimitives.WriteUInt16LittleEndian(s[40..], (ushort)ehsize);
            BinaryPrimitives.WriteUInt16LittleEndian(s[42..], (ushort)phentsize);
            BinaryPrimitives.WriteUInt16LittleEndian(s[44..], (ushort)segments.Length);
        }

        for (int i = 0; i < segments.Length; i++)
        {
            var g = segments[i];
            ulong memsz = g.MemorySize == ulong.MaxValue ? g.FileSize : g.MemorySize;
            var p = s.Slice(ehsize + (i * phentsize), phentsize);
            BinaryPrimitives.WriteUInt32LittleEndian(p, (uint)g.Type);
            if (is64)
            {
                BinaryPrimitives.WriteUInt32LittleEndian(p[4..], (uint)g.Flags);
                BinaryPrimitives.WriteUInt64LittleEndian(p[8..], g.Offset);
                BinaryPrimitives.WriteUInt64LittleEndian(p[16..], g.Address);
                BinaryPrimitives.WriteUInt64LittleEndian(p[24..], g.Address);
                BinaryPrimitives.WriteUInt64LittleEndian(p[32..], g.FileSize);
                BinaryPrimitives.WriteUInt64LittleEndian(p[40..], memsz);
                BinaryPrimitives.WriteUInt64LittleEndian(p[48..], g.Align);
            }
            else
            {
                BinaryPrimitives.WriteUInt32LittleEndian(p[4..], (uint)g.Offset);
                BinaryPrimitives.WriteUInt32LittleEndian(p[8..], (uint)g.Address);
                BinaryPrimitives.WriteUInt32LittleEndian(p[12..], (uint)g.Address);
                BinaryPrimitives.WriteUInt32LittleEndian(p[16..], (uint)g.FileSize);
                BinaryPrimitives.WriteUInt32LittleEndian(p[20..], (uint)memsz);
                BinaryPrimitives.WriteUInt32LittleEndian(p[24..], (uint)g.Flags);
                BinaryPrimitives.WriteUInt32LittleEndian(p[28..], (uint)g.Align);
            }
        }

        foreach (var (offset, bytes) in payload ?? [])
        {
            bytes.CopyTo(f, offset);
        }

        return f;
    }

    /// <summary>One note: namesz, descsz, type, the name with its NUL padded to <paramref name="align"/>, the descriptor padded likewise.</summary>
    public static byte[] Note(string name, uint type, byte[] descriptor, int align = 4)
    {
        int nameSize = name.Length + 1;
        int Pad(int n) => (n + align - 1) & ~(align - 1);
        var note = new byte[12 + Pad(nameSize) + Pad(descriptor.Length)];
        BinaryPrimitives.WriteUInt32LittleEndian(note, (uint)nameSize);
        BinaryPrimitives.WriteUInt32LittleEndian(note.AsSpan(4), (uint)descriptor.Length);
        BinaryPrimitives.WriteUInt32LittleEndian(note.AsSpan(8), type);
        System.Text.Encoding.ASCII.GetBytes(name).CopyTo(note, 12);
        descriptor.CopyTo(note, 12 + Pad(nameSize));
        return note;
    }

    /// <summary>A typical static executable: text and data PT_LOADs, PT_NOTE with two notes, PT_TLS, PT_GNU_STACK, PT_INTERP.</summary>
    public static byte[] Typical(bool is64, out byte[] firstNote, out byte[] secondNote)
    {
        firstNote = Note("GNU", 1, [1, 2, 3, 4]);
        secondNote = Note("Xen", 18, [0x20, 0, 0x10, 0]);
        byte[] notes = [.. firstNote, .. secondNote];
        byte[] interp = "/lib64/ld-linux-x86-64.so.2\0"u8.ToArray();
        return Build(is64,
        [
            new(ElfSegmentType.Load, 0, 0x1000, 0x400000, Flags: ElfSegmentFlags.Read | ElfSegmentFlags.Execute),
            new(ElfSegmentType.Load, 0x1000, 0x800, 0x401000, MemorySize: 0x3000, Flags: ElfSegmentFlags.Read | ElfSegmentFlags.Write),
            new(ElfSegmentType.Note, 0x1800, (ulong)notes.Length, Align: 4),
            new(ElfSegmentType.Tls, 0x1900, 0x10, 0x402000, MemorySize: 0x40),
            new(ElfSegmentType.Interpreter, 0x1A00, (ulong)interp.Length),
            new(ElfSegmentType.GnuStack, 0, 0, Flags: ElfSegmentFlags.Read | ElfSegmentFlags.Write, Align: 16),
        ], payload: [(0x1800, notes), (0x1A00, interp)]);
    }
}
