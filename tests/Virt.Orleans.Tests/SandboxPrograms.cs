using System.Buffers.Binary;
using Iced.Intel;
using Virt.Testing;
using static Iced.Intel.AssemblerRegisters;

namespace Virt.Orleans.Tests;

/// <summary>Static x86-64 Linux executables for the sandbox service tests, assembled into a minimal ELF.</summary>
internal static class SandboxPrograms
{
    private const ulong Base = 0x400000;
    private const int Headers = 64 + (2 * 56);

    /// <summary>Reads up to 256 bytes of standard input, writes them upper-cased (ASCII letters) to standard output, exits 0.</summary>
    public static byte[] Upper { get; } = Elf(a =>
    {
        var done = a.CreateLabel();
        var loop = a.CreateLabel();
        var next = a.CreateLabel();
        a.sub(rsp, 256);
        a.xor(eax, eax); // read
        a.xor(edi, edi);
        a.mov(rsi, rsp);
        a.mov(edx, 256);
        a.syscall();
        a.test(rax, rax);
        a.jle(done);
        a.mov(rdx, rax);
        a.xor(ecx, ecx);
        a.Label(ref loop);
        a.mov(al, __byte_ptr[rsp + rcx]);
        a.cmp(al, (byte)'a');
        a.jb(next);
        a.cmp(al, (byte)'z');
        a.ja(next);
        a.sub(__byte_ptr[rsp + rcx], 0x20);
        a.Label(ref next);
        a.inc(rcx);
        a.cmp(rcx, rdx);
        a.jb(loop);
        a.mov(eax, 1); // write
        a.mov(edi, 1);
        a.mov(rsi, rsp);
        a.syscall();
        a.Label(ref done);
        a.mov(eax, 60); // exit
        a.xor(edi, edi);
        a.syscall();
    });

    /// <summary>Reads one byte of standard input (its ready point), then loops forever: it ends only by a time limit.</summary>
    public static byte[] Spin { get; } = Elf(a =>
    {
        var loop = a.CreateLabel();
        a.sub(rsp, 16);
        a.xor(eax, eax);
        a.xor(edi, edi);
        a.mov(rsi, rsp);
        a.mov(edx, 1);
        a.syscall();
        a.Label(ref loop);
        a.jmp(loop);
    });

    private static byte[] Elf(Action<Assembler> emit)
    {
        ulong entry = Base + Headers;
        byte[] code = GuestProgram.Assemble(64, entry, emit);
        var file = new byte[Headers + code.Length];
        var f = file.AsSpan();
        f[0] = 0x7F;
        f[1] = (byte)'E';
        f[2] = (byte)'L';
        f[3] = (byte)'F';
        f[4] = 2; // 64-bit
        f[5] = 1; // little-endian
        f[6] = 1; // version
        BinaryPrimitives.WriteUInt16LittleEndian(f[16..], 2); // ET_EXEC
        BinaryPrimitives.WriteUInt16LittleEndian(f[18..], 62); // x86-64
        BinaryPrimitives.WriteUInt32LittleEndian(f[20..], 1);
        BinaryPrimitives.WriteUInt64LittleEndian(f[24..], entry);
        BinaryPrimitives.WriteUInt64LittleEndian(f[32..], 64); // program headers follow the ELF header
        BinaryPrimitives.WriteUInt16LittleEndian(f[52..], 64);
        BinaryPrimitives.WriteUInt16LittleEndian(f[54..], 56);
        BinaryPrimitives.WriteUInt16LittleEndian(f[56..], 2);
        ProgramHeader(f[64..], 1, 5, 0, Base, (ulong)file.Length); // PT_LOAD, R-X: headers and code
        ProgramHeader(f[120..], 0x6474E551, 6, 0, 0, 0); // PT_GNU_STACK, RW-
        code.CopyTo(f[Headers..]);
        return file;
    }

    private static void ProgramHeader(Span<byte> p, uint type, uint flags, ulong offset, ulong address, ulong size)
    {
        BinaryPrimitives.WriteUInt32LittleEndian(p, type);
        BinaryPrimitives.WriteUInt32LittleEndian(p[4..], flags);
        BinaryPrimitives.WriteUInt64LittleEndian(p[8..], offset);
        BinaryPrimitives.WriteUInt64LittleEndian(p[16..], address);
        BinaryPrimitives.WriteUInt64LittleEndian(p[24..], address);
        BinaryPrimitives.WriteUInt64LittleEndian(p[32..], size);
        BinaryPrimitives.WriteUInt64LittleEndian(p[40..], size);
        BinaryPrimitives.WriteUInt64LittleEndian(p[48..], 0x1000);
    }
}
