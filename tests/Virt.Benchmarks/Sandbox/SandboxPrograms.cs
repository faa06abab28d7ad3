using System.Buffers.Binary;
using Iced.Intel;
using Virt.Testing;
using static Iced.Intel.AssemblerRegisters;

namespace Virt.Benchmarks.Sandbox;

/// <summary>Tiny static ELF executables for the sandbox benchmarks (no toolchain needed).</summary>
internal static class SandboxPrograms
{
    private const ulong CodeAddress = 0x400000;
    private const ulong DataAddress = 0x600000;
    private const int HeaderBytes = 64 + (2 * 56);

    /// <summary>Writes "hello\n" and exits.</summary>
    public static byte[] Hello() => Build(a =>
    {
        a.mov(eax, 1);
        a.mov(edi, 1);
        a.mov(rsi, DataAddress);
        a.mov(edx, 6);
        a.syscall();
        Exit(a);
    }, "hello\n"u8.ToArray());

    /// <summary>Reads stdin once (the ready point) and writes back what it read, then exits.</summary>
    public static byte[] Echo() => Build(a =>
    {
        a.xor(eax, eax);
        a.xor(edi, edi);
        a.mov(rsi, DataAddress);
        a.mov(edx, 8192);
        a.syscall();
        a.mov(rdx, rax);
        a.mov(eax, 1);
        a.mov(edi, 1);
        a.mov(rsi, DataAddress);
        a.syscall();
        Exit(a);
    }, new byte[8192]);

    /// <summary>Reads stdin (ready point), then makes <paramref name="count"/> calls of system call <paramref name="number"/> with the given arguments, then exits.</summary>
    public static byte[] Loop(long number, int count, ulong a0 = 0, ulong a1 = 0, ulong a2 = 0, ulong a3 = 0, ulong a4 = 0, ulong a5 = 0, byte[]? data = null) => Build(a =>
    {
        a.xor(eax, eax);
        a.xor(edi, edi);
        a.mov(rsi, DataAddress + 4096);
        a.mov(edx, 16);
        a.syscall();
        var top = a.CreateLabel();
        a.mov(r12d, count);
        a.Label(ref top);
        a.mov(rax, (ulong)number);
        // Argument value 1 for a pointer slot means "the data buffer" (name at +0, input at +64, output at +128).
        a.mov(rdi, a0 == 1 ? DataAddress : a0);
        a.mov(rsi, a1);
        a.mov(rdx, a2 == 1 ? DataAddress + 64 : a2);
        a.mov(r10, a3);
        a.mov(r8, a4 == 1 ? DataAddress + 128 : a4);
        a.mov(r9, a5);
        a.syscall();
        a.dec(r12d);
        a.jnz(top);
        Exit(a);
    }, data ?? new byte[8192]);

    private static void Exit(Assembler a)
    {
        a.mov(eax, 231);
        a.xor(edi, edi);
        a.syscall();
    }

    private static byte[] Build(Action<Assembler> emit, byte[] data)
    {
        ulong entry = CodeAddress + HeaderBytes;
        var code = GuestProgram.Assemble(64, entry, emit);
        int dataOffset = (HeaderBytes + code.Length + 0xFFF) & ~0xFFF;
        var file = new byte[dataOffset + data.Length];
        var f = file.AsSpan();
        f[0] = 0x7F; f[1] = (byte)'E'; f[2] = (byte)'L'; f[3] = (byte)'F'; f[4] = 2; f[5] = 1; f[6] = 1;
        BinaryPrimitives.WriteUInt16LittleEndian(f[16..], 2);
        BinaryPrimitives.WriteUInt16LittleEndian(f[18..], 62);
        BinaryPrimitives.WriteUInt32LittleEndian(f[20..], 1);
        BinaryPrimitives.WriteUInt64LittleEndian(f[24..], entry);
        BinaryPrimitives.WriteUInt64LittleEndian(f[32..], 64);
        BinaryPrimitives.WriteUInt16LittleEndian(f[52..], 64);
        BinaryPrimitives.WriteUInt16LittleEndian(f[54..], 56);
        BinaryPrimitives.WriteUInt16LittleEndian(f[56..], 2);
        Phdr(f[64..], 5, 0, CodeAddress, (ulong)(HeaderBytes + code.Length));
        Phdr(f[120..], 6, (ulong)dataOffset, DataAddress, (ulong)data.Length);
        code.CopyTo(f[HeaderBytes..]);
        data.CopyTo(f[dataOffset..]);
        return file;
    }

    private static void Phdr(Span<byte> p, uint flags, ulong offset, ulong vaddr, ulong size)
    {
        BinaryPrimitives.WriteUInt32LittleEndian(p, 1);
        BinaryPrimitives.WriteUInt32LittleEndian(p[4..], flags);
        BinaryPrimitives.WriteUInt64LittleEndian(p[8..], offset);
        BinaryPrimitives.WriteUInt64LittleEndian(p[16..], vaddr);
        BinaryPrimitives.WriteUInt64LittleEndian(p[24..], vaddr);
        BinaryPrimitives.WriteUInt64LittleEndian(p[32..], size);
        BinaryPrimitives.WriteUInt64LittleEndian(p[40..], size);
        BinaryPrimitives.WriteUInt64LittleEndian(p[48..], 0x1000);
    }
}
