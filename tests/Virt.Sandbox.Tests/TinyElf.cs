using System.Buffers.Binary;
using Iced.Intel;
using Virt.Testing;

namespace Virt.Sandbox.Tests;

/// <summary>Builds minimal static ELF64 executables around Iced-assembled code, for tests.</summary>
internal static class TinyElf
{
    public const ulong CodeAddress = 0x400000;
    public const ulong DataAddress = 0x600000;
    private const int HeaderBytes = 64 + (3 * 56);

    /// <summary>An executable whose code (at <see cref="CodeAddress"/> + headers) is what <paramref name="emit"/> assembles; <paramref name="data"/> lands read-write at <see cref="DataAddress"/>.</summary>
    public static byte[] Build(Action<Assembler> emit, byte[]? data = null, ulong bssBytes = 0, bool execStack = false)
    {
        ulong entry = CodeAddress + HeaderBytes;
        var code = GuestProgram.Assemble(64, entry, emit);
        data ??= [];
        int dataOffset = (HeaderBytes + code.Length + 0xFFF) & ~0xFFF;
        var file = new byte[dataOffset + data.Length];
        var f = file.AsSpan();
        f[0] = 0x7F; f[1] = (byte)'E'; f[2] = (byte)'L'; f[3] = (byte)'F';
        f[4] = 2; f[5] = 1; f[6] = 1;
        BinaryPrimitives.WriteUInt16LittleEndian(f[16..], 2); // ET_EXEC
        BinaryPrimitives.WriteUInt16LittleEndian(f[18..], 62);
        BinaryPrimitives.WriteUInt32LittleEndian(f[20..], 1);
        BinaryPrimitives.WriteUInt64LittleEndian(f[24..], entry);
        BinaryPrimitives.WriteUInt64LittleEndian(f[32..], 64);
        BinaryPrimitives.WriteUInt16LittleEndian(f[52..], 64);
        BinaryPrimitives.WriteUInt16LittleEndian(f[54..], 56);
        BinaryPrimitives.WriteUInt16LittleEndian(f[56..], 3);
        WritePhdr(f[64..], 1, 5, 0, CodeAddress, (ulong)(HeaderBytes + code.Length), (ulong)(HeaderBytes + code.Length));
        WritePhdr(f[120..], 1, 6, (ulong)dataOffset, DataAddress, (ulong)data.Length, (ulong)data.Length + bssBytes + 1);
        WritePhdr(f[176..], 0x6474E551, execStack ? 7u : 6u, 0, 0, 0, 0);
        code.CopyTo(f[HeaderBytes..]);
        data.CopyTo(f[dataOffset..]);
        return file;
    }

    public static void WritePhdr(Span<byte> p, uint type, uint flags, ulong offset, ulong vaddr, ulong filesz, ulong memsz)
    {
        BinaryPrimitives.WriteUInt32LittleEndian(p, type);
        BinaryPrimitives.WriteUInt32LittleEndian(p[4..], flags);
        BinaryPrimitives.WriteUInt64LittleEndian(p[8..], offset);
        BinaryPrimitives.WriteUInt64LittleEndian(p[16..], vaddr);
        BinaryPrimitives.WriteUInt64LittleEndian(p[24..], vaddr);
        BinaryPrimitives.WriteUInt64LittleEndian(p[32..], filesz);
        BinaryPrimitives.WriteUInt64LittleEndian(p[40..], memsz);
        BinaryPrimitives.WriteUInt64LittleEndian(p[48..], 0x1000);
    }
}
