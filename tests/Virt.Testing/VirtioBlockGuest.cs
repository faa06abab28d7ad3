using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace Virt.Testing;

/// <summary>
/// A flat long-mode guest with a minimal virtio-blk driver, driven by one-letter commands on COM1. It drives the
/// first virtio-mmio device (a virtio-blk disk of at least 4 KiB) through one split virtqueue of
/// <see cref="QueueSize"/> entries at fixed guest addresses, polling the used ring (no interrupts).
/// </summary>
/// <remarks>
/// <para>At boot it checks the device (magic, version 2, device ID 2), negotiates VIRTIO_F_VERSION_1 and
/// VIRTIO_BLK_F_FLUSH, sets up queue 0, reads the disk's first 4 KiB (sectors 0-7) and takes the generation found
/// there as its own (0 on a blank disk), then prints <c>disk ready GGGGGGGG</c> (8 hex digits).</para>
/// <para>Commands, one byte each on COM1:</para>
/// <list type="bullet">
/// <item><c>w</c>: increments the generation it keeps in memory, writes the pattern of that generation to sectors
/// 0-7 (qword 0 the magic <c>VIRTBLK1</c>, qword <c>i</c> the generation shifted left by 16 plus <c>i</c>), flushes,
/// and prints <c>wrote GGGGGGGG</c>.</item>
/// <item><c>r</c>: clears its buffer, reads sectors 0-7 back from the device and prints
/// <c>read DDDDDDDD MMMMMMMM VERDICT</c>: the generation on the disk, the one in memory, and <c>ok</c> (the whole
/// pattern of generation D is there), <c>blank</c> (no magic) or <c>bad</c> (the magic with a broken pattern).</item>
/// <item><c>q</c>: stops the machine itself: writes the low byte of the generation in memory to
/// <see cref="DebugExitPort"/> (a VM built with a debug-exit device stops with that exit code).</item>
/// </list>
/// <para>A request that completes with a status other than OK prints <c>io error S</c>; a device that does not
/// look like virtio-blk prints <c>virtio error C</c> (C names the failed check) and stops the guest.
/// Each line ends with <c>\n</c>.</para>
/// </remarks>
public static class VirtioBlockGuest
{
    /// <summary>Where the image loads and starts (64-bit mode).</summary>
    public const ulong Load = 0x100000;

    /// <summary>The virtio-mmio window of the disk when it is a VM's first virtio device.</summary>
    public const ulong DefaultWindow = 0xD000_0000;

    /// <summary>Entries in the request queue.</summary>
    public const int QueueSize = 8;

    /// <summary>Bytes the guest reads and writes: sectors 0-7.</summary>
    public const int BlockBytes = 4096;

    /// <summary>The first qword of a written block: <c>VIRTBLK1</c> in ASCII.</summary>
    public const ulong Magic = 0x314B_4C42_5452_4956;

    /// <summary>Where the guest keeps its generation (32 bits) in memory.</summary>
    public const ulong GenerationAddress = 0x205000;

    /// <summary>The port the <c>q</c> command writes to: Virt.Sdk's default debug-exit port.</summary>
    public const ushort DebugExitPort = 0x501;

    /// <summary>The line printed once the driver is ready (followed by the generation found on the disk).</summary>
    public const string Ready = "disk ready ";

    private const ulong StackTop = 0x1F0000;
    private const ulong Descriptors = 0x200000;
    private const ulong Avail = 0x200800;
    private const ulong Used = 0x201000;
    private const ulong Header = 0x202000;
    private const ulong Data = 0x203000;
    private const ulong Status = 0x204000;
    private const ushort Com1 = 0x3F8;
    private const ushort LineStatus = Com1 + 5;
    private const uint FeatureFlush = 1u << 9;
    private const int RequestIn = 0, RequestOut = 1, RequestFlush = 4;
    private const ushort DescNext = 1, DescWrite = 2;

    /// <summary>The guest for a disk whose virtio-mmio window is at <see cref="DefaultWindow"/>.</summary>
    public static byte[] Image { get; } = Build(DefaultWindow);

    /// <summary>The block the guest writes for <paramref name="generation"/>, for checking a disk image from the host.</summary>
    public static byte[] Pattern(uint generation)
    {
        var block = new byte[BlockBytes];
        System.Buffers.Binary.BinaryPrimitives.WriteUInt64LittleEndian(block, Magic);
        for (int i = 1; i < BlockBytes / 8; i++)
        {
            System.Buffers.Binary.BinaryPrimitives.WriteUInt64LittleEndian(block.AsSpan(i * 8), ((ulong)generation << 16) + (ulong)i);
        }

        return block;
    }

    /// <summary>The expected <c>wrote</c> line for <paramref name="generation"/>.</summary>
    public static string Wrote(uint generation) => $"wrote {generation:x8}\n";

    /// <summary>The expected <c>read</c> line.</summary>
    public static string Read(uint onDisk, uint inMemory, string verdict = "ok") => $"read {onDisk:x8} {inMemory:x8} {verdict}\n";

    /// <summary>Assembles the guest for a disk whose virtio-mmio window is at <paramref name="window"/>.</summary>
    public static byte[] Build(ulong window) => GuestProgram.Assemble(64, Load, a =>
    {
        var fail = a.CreateLabel();
        var submit = a.CreateLabel();
        var readBlock = a.CreateLabel();
        var printHex = a.CreateLabel();
        var ioError = a.CreateLabel();
        var loop = a.CreateLabel();
        var commandWrite = a.CreateLabel();
        var commandRead = a.CreateLabel();
        var commandQuit = a.CreateLabel();

        a.mov(rsp, StackTop);
        a.cld();
        a.mov(rbx, window);

        // Is it a virtio-blk device, version 2?
        a.mov(r12d, 'm');
        a.cmp(__dword_ptr[rbx], 0x7472_6976);
        a.jne(fail);
        a.mov(r12d, 'v');
        a.cmp(__dword_ptr[rbx + 0x04], 2);
        a.jne(fail);
        a.mov(r12d, 'd');
        a.cmp(__dword_ptr[rbx + 0x08], 2);
        a.jne(fail);

        // Reset, ACKNOWLEDGE, DRIVER; features FLUSH (word 0) and VERSION_1 (word 1); FEATURES_OK.
        a.mov(__dword_ptr[rbx + 0x70], 0);
        a.mov(__dword_ptr[rbx + 0x70], 1);
        a.mov(__dword_ptr[rbx + 0x70], 3);
        a.mov(r12d, 'f');
        a.mov(__dword_ptr[rbx + 0x14], 0);
        a.mov(eax, __dword_ptr[rbx + 0x10]);
        a.test(eax, FeatureFlush);
        a.jz(fail);
        a.mov(__dword_ptr[rbx + 0x14], 1);
        a.mov(eax, __dword_ptr[rbx + 0x10]);
        a.test(eax, 1);
        a.jz(fail);
        a.mov(__dword_ptr[rbx + 0x24], 0);
        a.mov(__dword_ptr[rbx + 0x20], FeatureFlush);
        a.mov(__dword_ptr[rbx + 0x24], 1);
        a.mov(__dword_ptr[rbx + 0x20], 1);
        a.mov(__dword_ptr[rbx + 0x70], 0xB);
        a.mov(r12d, 'o');
        a.mov(eax, __dword_ptr[rbx + 0x70]);
        a.test(eax, 8);
        a.jz(fail);

        // Queue 0 at fixed addresses.
        a.mov(r12d, 'q');
        a.mov(__dword_ptr[rbx + 0x30], 0);
        a.cmp(__dword_ptr[rbx + 0x34], QueueSize);
        a.jb(fail);
        a.mov(__dword_ptr[rbx + 0x38], QueueSize);
        a.mov(__dword_ptr[rbx + 0x80], (int)Descriptors);
        a.mov(__dword_ptr[rbx + 0x84], 0);
        a.mov(__dword_ptr[rbx + 0x90], (int)Avail);
        a.mov(__dword_ptr[rbx + 0x94], 0);
        a.mov(__dword_ptr[rbx + 0xA0], (int)Used);
        a.mov(__dword_ptr[rbx + 0xA4], 0);
        a.mov(__dword_ptr[rbx + 0x44], 1);
        a.mov(__dword_ptr[rbx + 0x70], 0xF);

        // Take the disk's generation as ours.
        a.call(readBlock);
        a.mov(__dword_ptr[GenerationAddress], eax);
        Print(a, Ready);
        a.call(printHex);
        Print(a, "\n");

        // Main loop: wait for a command byte on COM1.
        a.Label(ref loop);
        a.mov(dx, LineStatus);
        a.@in(al, dx);
        a.test(al, 1);
        a.jz(loop);
        a.mov(dx, Com1);
        a.@in(al, dx);
        a.cmp(al, (byte)'w');
        a.je(commandWrite);
        a.cmp(al, (byte)'r');
        a.je(commandRead);
        a.cmp(al, (byte)'q');
        a.je(commandQuit);
        a.jmp(loop);

        // q: stop the machine with the generation as the exit code.
        a.Label(ref commandQuit);
        a.mov(eax, __dword_ptr[GenerationAddress]);
        a.mov(dx, DebugExitPort);
        a.@out(dx, al);
        a.jmp(loop);

        // w: next generation, write it, flush.
        a.Label(ref commandWrite);
        a.inc(__dword_ptr[GenerationAddress]);
        a.mov(eax, __dword_ptr[GenerationAddress]);
        a.mov(rdx, rax);
        a.shl(rdx, 16);
        a.mov(rcx, Magic);
        a.mov(__qword_ptr[Data], rcx);
        a.mov(ecx, 1);
        var fill = a.CreateLabel();
        a.Label(ref fill);
        a.lea(r8, __[rdx + rcx]);
        a.mov(__qword_ptr[rcx * 8 + (long)Data], r8);
        a.inc(ecx);
        a.cmp(ecx, BlockBytes / 8);
        a.jb(fill);
        a.mov(edi, RequestOut);
        a.xor(esi, esi);
        a.call(submit);
        a.test(eax, eax);
        a.jnz(ioError);
        a.mov(edi, RequestFlush);
        a.xor(esi, esi);
        a.call(submit);
        a.test(eax, eax);
        a.jnz(ioError);
        Print(a, "wrote ");
        a.mov(eax, __dword_ptr[GenerationAddress]);
        a.call(printHex);
        Print(a, "\n");
        a.jmp(loop);

        // r: read back and judge.
        a.Label(ref commandRead);
        a.call(readBlock);
        a.mov(r13d, r9d);
        Print(a, "read ");
        a.call(printHex);
        Print(a, " ");
        a.mov(eax, __dword_ptr[GenerationAddress]);
        a.call(printHex);
        var notOk = a.CreateLabel();
        var notBlank = a.CreateLabel();
        var verdictDone = a.CreateLabel();
        a.cmp(r13d, 0);
        a.jne(notOk);
        Print(a, " ok\n");
        a.jmp(verdictDone);
        a.Label(ref notOk);
        a.cmp(r13d, 1);
        a.jne(notBlank);
        Print(a, " blank\n");
        a.jmp(verdictDone);
        a.Label(ref notBlank);
        Print(a, " bad\n");
        a.Label(ref verdictDone);
        a.jmp(loop);

        // A request that failed: status in eax.
        a.Label(ref ioError);
        Print(a, "io error ");
        a.call(printHex);
        Print(a, "\n");
        a.jmp(loop);

        // The device is not what the driver expects: r12 names the check.
        a.Label(ref fail);
        Print(a, "virtio error ");
        a.mov(eax, r12d);
        a.mov(dx, Com1);
        a.@out(dx, al);
        Print(a, "\n");
        var halt = a.CreateLabel();
        a.Label(ref halt);
        a.cli();
        a.hlt();
        a.jmp(halt);

        // readBlock: clears the buffer, reads sectors 0-7; eax = generation on the disk,
        // r9d = 0 (pattern intact), 1 (blank), 2 (broken pattern), 3 (I/O error, eax = status).
        a.Label(ref readBlock);
        a.mov(rdi, Data);
        a.mov(ecx, BlockBytes / 8);
        a.xor(eax, eax);
        a.rep.stosq();
        a.mov(edi, RequestIn);
        a.mov(esi, DescWrite);
        a.call(submit);
        a.mov(r9d, 3);
        a.test(eax, eax);
        var ret1 = a.CreateLabel();
        a.jnz(ret1);
        a.mov(rcx, Magic);
        a.xor(eax, eax);
        a.mov(r9d, 1);
        a.cmp(__qword_ptr[Data], rcx);
        a.jne(ret1);
        a.mov(rdx, __qword_ptr[Data + 8]);
        a.shr(rdx, 16);
        a.mov(eax, edx);
        a.shl(rdx, 16);
        a.mov(r9d, 2);
        a.mov(ecx, 1);
        var verify = a.CreateLabel();
        a.Label(ref verify);
        a.lea(r8, __[rdx + rcx]);
        a.cmp(__qword_ptr[rcx * 8 + (long)Data], r8);
        a.jne(ret1);
        a.inc(ecx);
        a.cmp(ecx, BlockBytes / 8);
        a.jb(verify);
        a.xor(r9d, r9d);
        a.Label(ref ret1);
        a.ret();

        // submit: edi = request type, esi = flags of the data descriptor (WRITE for a read); sector 0, 4 KiB.
        // Posts the chain header -> data -> status (header -> status for a flush), notifies queue 0, polls the used
        // ring until the device has returned it, acknowledges the interrupt; eax = the status byte.
        a.Label(ref submit);
        a.mov(__dword_ptr[Header], edi);
        a.mov(__dword_ptr[Header + 4], 0);
        a.mov(__qword_ptr[Header + 8], 0);
        a.mov(rax, Header);
        a.mov(__qword_ptr[Descriptors], rax);
        a.mov(__dword_ptr[Descriptors + 8], 16);
        a.mov(__word_ptr[Descriptors + 12], DescNext);
        a.mov(__word_ptr[Descriptors + 14], 1);
        a.mov(rax, Data);
        a.mov(__qword_ptr[Descriptors + 16], rax);
        a.mov(__dword_ptr[Descriptors + 24], BlockBytes);
        a.mov(eax, esi);
        a.or(eax, DescNext);
        a.mov(__word_ptr[Descriptors + 28], ax);
        a.mov(__word_ptr[Descriptors + 30], 2);
        a.mov(rax, Status);
        a.mov(__qword_ptr[Descriptors + 32], rax);
        a.mov(__dword_ptr[Descriptors + 40], 1);
        a.mov(__word_ptr[Descriptors + 44], DescWrite);
        a.mov(__word_ptr[Descriptors + 46], 0);
        var chained = a.CreateLabel();
        a.cmp(edi, RequestFlush);
        a.jne(chained);
        a.mov(__word_ptr[Descriptors + 14], 2);
        a.Label(ref chained);
        a.mov(__byte_ptr[Status], 0xFF);
        a.movzx(eax, __word_ptr[Avail + 2]);
        a.mov(ecx, eax);
        a.and(ecx, QueueSize - 1);
        a.mov(__word_ptr[rcx * 2 + (long)(Avail + 4)], 0);
        a.inc(eax);
        a.mov(__word_ptr[Avail + 2], ax);
        a.mfence();
        a.mov(__dword_ptr[rbx + 0x50], 0);
        var poll = a.CreateLabel();
        a.Label(ref poll);
        a.pause();
        a.cmp(__word_ptr[Used + 2], ax);
        a.jne(poll);
        a.mov(eax, __dword_ptr[rbx + 0x60]);
        a.mov(__dword_ptr[rbx + 0x64], eax);
        a.movzx(eax, __byte_ptr[Status]);
        a.ret();

        // printHex: eax as 8 hex digits on COM1.
        a.Label(ref printHex);
        a.push(rax);
        a.push(rcx);
        a.push(rdx);
        a.mov(r10d, eax);
        a.mov(ecx, 8);
        var digit = a.CreateLabel();
        var decimalDigit = a.CreateLabel();
        a.Label(ref digit);
        a.rol(r10d, 4);
        a.mov(eax, r10d);
        a.and(eax, 0xF);
        a.cmp(al, 10);
        a.jb(decimalDigit);
        a.add(al, (byte)('a' - 10 - '0'));
        a.Label(ref decimalDigit);
        a.add(al, (byte)'0');
        a.mov(dx, Com1);
        a.@out(dx, al);
        a.dec(ecx);
        a.jnz(digit);
        a.pop(rdx);
        a.pop(rcx);
        a.pop(rax);
        a.ret();
    });

    /// <summary>Prints <paramref name="text"/> on COM1; keeps RAX, clobbers DX.</summary>
    private static void Print(Assembler a, string text)
    {
        a.push(rax);
        a.mov(dx, Com1);
        foreach (char c in text)
        {
            a.mov(al, (byte)c);
            a.@out(dx, al);
        }

        a.pop(rax);
    }
}
