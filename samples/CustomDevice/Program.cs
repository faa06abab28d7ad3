// CustomDevice: a device written in C# and added with WithDevice. It is a small DMA engine that computes the CRC-32
// of a range of guest memory: the guest programs its MMIO registers, rings it, and sleeps until the device's interrupt
// arrives through the 8259 PIC. The device checks every value the guest gives it (the range must lie in guest RAM and be
// at most 1 MiB), so a second request, for memory the guest does not have, ends with an error status instead of a fault.
//
//   dotnet run -c Release --project samples/CustomDevice [-- --backend kvm|interpreter|auto]
//
// Registers (32-bit unless stated), at the window the VM gives the device:
//   0x00 ADDRESS (64-bit)  guest physical address of the data
//   0x08 LENGTH            bytes, 1 to 1 MiB
//   0x0C DOORBELL          any write starts the request; the device raises its line when done
//   0x10 STATUS            0 idle, 1 done, 2 rejected; reading it acknowledges (lowers the line)
//   0x14 RESULT            the CRC-32 of the last request that was done
using System.Buffers.Binary;
using Iced.Intel;
using Virt;
using Virt.Boot;
using Virt.Devices;
using Virt.Memory;
using static Iced.Intel.AssemblerRegisters;

var backend = BackendKind.Auto;
for (int i = 0; i < args.Length; i++)
{
    if (args[i] == "--backend" && i + 1 < args.Length)
    {
        backend = args[++i].ToLowerInvariant() switch
        {
            "kvm" => BackendKind.Kvm,
            "interpreter" => BackendKind.Interpreter,
            "whp" => BackendKind.Whp,
            "auto" => BackendKind.Auto,
            var other => throw new ArgumentException($"Unknown backend '{other}'; use kvm, interpreter, whp or auto."),
        };
    }
}

const ulong Code = 0x100000, Idt = 0x101000, IdtPointer = 0x102000, Handler = 0x103000;
const ulong Window = 0xE000_0000; // the device's MMIO window, above the VM's RAM
const uint Irq = 5;               // an ISA line: the guest unmasks it on the PIC, vector 0x20 + 5

Crc32Engine? engine = null;
try
{
    await using var vm = VirtualMachine.CreateBuilder()
        .WithName("custom-device")
        .WithMemoryMiB(16)
        .WithBackend(backend)
        .WithInterruptController()
        .WithSerialConsole(Console.Out)
        .WithDebugExit()
        .WithDevice("crc32", new DeviceResources { MmioAddress = new GuestAddress(Window), MmioSize = 0x1000, Irq = Irq },
            context => engine = new Crc32Engine(context.Memory, context.InterruptLine))
        .WithFlatBinary(GuestProgram.Requests(Code, IdtPointer, Window), new GuestAddress(Code))
        .WithFlatBinary(GuestProgram.InterruptTable(0x20 + (int)Irq, Handler), new GuestAddress(Idt))
        .WithFlatBinary(GuestProgram.TablePointer(Idt), new GuestAddress(IdtPointer))
        .WithFlatBinary(GuestProgram.InterruptHandler(Handler, Window), new GuestAddress(Handler))
        .WithEntryPoint(new GuestAddress(Code), StartMode.Long64)
        .Build();

    Console.WriteLine($"backend: {vm.BackendSelection.Name}");
    Console.WriteLine($"device: {vm.Devices[0]}");
    using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(30));
    var exit = await vm.RunAsync(timeout.Token);
    Console.WriteLine($"guest stopped: {exit.Description}");
    Console.WriteLine($"device: {engine!.Completed} request(s) done, {engine.Rejected} rejected");
    return exit.Reason == StopReason.DebugExit ? exit.ExitCode ?? 0 : 1;
}
catch (InvalidOperationException e)
{
    Console.Error.WriteLine(e.Message);
    return 2;
}

/// <summary>
/// The device. It runs on the vCPU thread that touched its window, must not block or throw, and treats every register
/// value as hostile: a request outside guest RAM or longer than <see cref="MaxLength"/> is rejected.
/// </summary>
internal sealed class Crc32Engine(IGuestMemory memory, IInterruptLine line) : IMmioDevice
{
    private const int MaxLength = 1 << 20;
    private const uint StatusIdle = 0, StatusDone = 1, StatusRejected = 2;
    private ulong _address;
    private uint _length;
    private uint _status = StatusIdle;
    private uint _result;
    private int _completed;
    private int _rejected;

    public int Completed => Volatile.Read(ref _completed);

    public int Rejected => Volatile.Read(ref _rejected);

    public void Read(ulong offset, Span<byte> data)
    {
        ulong value = offset switch
        {
            0x00 => _address,
            0x08 => _length,
            0x10 => _status,
            0x14 => _result,
            _ => 0,
        };
        if (offset == 0x10)
        {
            line.Lower();
        }

        Span<byte> bytes = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(bytes, value);
        bytes[..Math.Min(data.Length, 8)].CopyTo(data);
    }

    public void Write(ulong offset, ReadOnlySpan<byte> data)
    {
        Span<byte> bytes = stackalloc byte[8];
        bytes.Clear();
        data[..Math.Min(data.Length, 8)].CopyTo(bytes);
        ulong value = BinaryPrimitives.ReadUInt64LittleEndian(bytes);
        switch (offset)
        {
            case 0x00:
                _address = data.Length >= 8 ? value : (_address & ~0xFFFF_FFFFUL) | (uint)value;
                break;
            case 0x04:
                _address = (_address & 0xFFFF_FFFFUL) | ((ulong)(uint)value << 32);
                break;
            case 0x08:
                _length = (uint)value;
                break;
            case 0x0C:
                Start();
                break;
            default:
                break; // writes to read-only or unknown registers are ignored, as on real hardware
        }
    }

    private void Start()
    {
        // The range must be non-empty, bounded, and entirely guest RAM (Contains checks for wrap-around too).
        if (_length is 0 or > MaxLength || !memory.Contains(new GuestAddress(_address), _length)
            || !memory.TryGetSpan(new GuestAddress(_address), (int)_length, forWrite: false, out var span))
        {
            _status = StatusRejected;
            Interlocked.Increment(ref _rejected);
        }
        else
        {
            _result = Crc32.Compute(span);
            _status = StatusDone;
            Interlocked.Increment(ref _completed);
        }

        line.Raise();
    }
}

/// <summary>CRC-32 as in IEEE 802.3 and zlib (reflected polynomial 0xEDB88320); the check value of "123456789" is 0xCBF43926.</summary>
internal static class Crc32
{
    private static readonly uint[] Table = BuildTable();

    public static uint Compute(ReadOnlySpan<byte> data)
    {
        uint crc = 0xFFFF_FFFF;
        foreach (byte b in data)
        {
            crc = Table[(crc ^ b) & 0xFF] ^ (crc >> 8);
        }

        return ~crc;
    }

    private static uint[] BuildTable()
    {
        var table = new uint[256];
        for (uint n = 0; n < 256; n++)
        {
            uint c = n;
            for (int k = 0; k < 8; k++)
            {
                c = (c & 1) != 0 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1;
            }

            table[n] = c;
        }

        return table;
    }
}

/// <summary>The guest, in long mode at CPL 0 with the identity map the VM sets up.</summary>
internal static class GuestProgram
{
    private const ushort Com1 = 0x3F8;

    /// <summary>
    /// Initialises the PIC with only the device's line unmasked, then makes two requests: the CRC-32 of "123456789",
    /// printed in hex, and one for memory far above RAM, whose status is printed. Exits with 0 when the first was done
    /// and the second rejected, 1 otherwise.
    /// </summary>
    public static byte[] Requests(ulong origin, ulong idtPointer, ulong window)
    {
        var a = new Assembler(64);
        var data = a.CreateLabel();
        var digits = a.CreateLabel();
        var crcText = a.CreateLabel();
        var badText = a.CreateLabel();
        var fail = a.CreateLabel();

        a.mov(rax, idtPointer);
        a.lidt(__[rax]);
        // Master PIC: vectors 0x20-0x27, only IRQ 5 unmasked; slave: vectors 0x28-0x2F, all masked.
        foreach (var (port, value) in new (byte, byte)[] { (0x20, 0x11), (0x21, 0x20), (0x21, 0x04), (0x21, 0x01), (0x21, 0xDF), (0xA0, 0x11), (0xA1, 0x28), (0xA1, 0x02), (0xA1, 0x01), (0xA1, 0xFF) })
        {
            a.mov(al, value);
            a.@out(port, al);
        }

        a.mov(rdi, window);

        // Request 1: the CRC-32 of the nine digits below.
        a.lea(rax, __[data]);
        a.mov(__qword_ptr[rdi], rax);
        a.mov(__dword_ptr[rdi + 0x08], 9);
        Request(a);
        a.cmp(r14d, 1);
        a.jne(fail);
        a.lea(rsi, __[crcText]);
        Print(a);
        a.mov(ebx, __dword_ptr[rdi + 0x14]);
        a.mov(ecx, 8);
        var hex = a.CreateLabel();
        a.Label(ref hex);
        a.rol(ebx, 4);
        a.mov(eax, ebx);
        a.and(eax, 0xF);
        a.lea(rsi, __[digits]);
        a.mov(al, __byte_ptr[rsi + rax]);
        a.mov(dx, Com1);
        a.@out(dx, al);
        a.dec(ecx);
        a.jnz(hex);
        a.mov(al, (byte)'\n');
        a.@out(dx, al);

        // Request 2: 4 KiB at 1 TiB, which is not guest RAM. The device must refuse it.
        a.mov(rax, 1UL << 40);
        a.mov(__qword_ptr[rdi], rax);
        a.mov(__dword_ptr[rdi + 0x08], 0x1000);
        Request(a);
        a.lea(rsi, __[badText]);
        Print(a);
        a.mov(eax, r14d);
        a.add(al, (byte)'0');
        a.mov(dx, Com1);
        a.@out(dx, al);
        a.mov(al, (byte)'\n');
        a.@out(dx, al);
        a.cmp(r14d, 2);
        a.jne(fail);

        a.xor(eax, eax);
        a.mov(dx, VirtualMachineBuilder.DefaultDebugExitPort);
        a.@out(dx, al);
        a.Label(ref fail);
        a.mov(al, 1);
        a.mov(dx, VirtualMachineBuilder.DefaultDebugExitPort);
        a.@out(dx, al);
        a.hlt();

        a.Label(ref data);
        a.db("123456789"u8.ToArray());
        a.Label(ref digits);
        a.db("0123456789abcdef"u8.ToArray());
        a.Label(ref crcText);
        a.db("crc32(\"123456789\") = 0x\0"u8.ToArray());
        a.Label(ref badText);
        a.db("request outside RAM: status \0"u8.ToArray());
        return Assemble(a, origin);
    }

    /// <summary>The device's interrupt handler: reads STATUS into R14 (which acknowledges), sets R15, sends the PIC its EOI.</summary>
    public static byte[] InterruptHandler(ulong origin, ulong window)
    {
        var a = new Assembler(64);
        a.push(rax);
        a.push(rdi);
        a.mov(rdi, window);
        a.mov(r14d, __dword_ptr[rdi + 0x10]); // reading STATUS acknowledges: the device lowers its line
        a.mov(r15d, 1);
        a.mov(al, 0x20);
        a.@out(0x20, al);                      // non-specific EOI to the master PIC
        a.pop(rdi);
        a.pop(rax);
        a.iretq();
        return Assemble(a, origin);
    }

    /// <summary>An IDT with one interrupt gate, at <paramref name="vector"/>, to <paramref name="handler"/>.</summary>
    public static byte[] InterruptTable(int vector, ulong handler)
    {
        var idt = new byte[256 * 16];
        ulong low = (handler & 0xFFFF) | ((ulong)ProcessorSetup.KernelCode64 << 16) | (0x8EUL << 40) | (((handler >> 16) & 0xFFFF) << 48);
        BinaryPrimitives.WriteUInt64LittleEndian(idt.AsSpan(vector * 16), low);
        BinaryPrimitives.WriteUInt64LittleEndian(idt.AsSpan((vector * 16) + 8), handler >> 32);
        return idt;
    }

    /// <summary>The 10-byte operand of LIDT for a full 256-entry table at <paramref name="table"/>.</summary>
    public static byte[] TablePointer(ulong table)
    {
        var pointer = new byte[10];
        BinaryPrimitives.WriteUInt16LittleEndian(pointer, (256 * 16) - 1);
        BinaryPrimitives.WriteUInt64LittleEndian(pointer.AsSpan(2), table);
        return pointer;
    }

    // Rings the doorbell at [RDI + 0x0C] and sleeps until the handler has run (R15 set, STATUS in R14).
    private static void Request(Assembler a)
    {
        var wait = a.CreateLabel();
        var done = a.CreateLabel();
        a.xor(r15d, r15d);
        a.mov(__dword_ptr[rdi + 0x0C], 1);
        a.Label(ref wait);
        a.cli();
        a.test(r15d, r15d);
        a.jnz(done);
        a.sti();                               // STI's one-instruction shadow: the interrupt cannot slip in before HLT
        a.hlt();
        a.jmp(wait);
        a.Label(ref done);
    }

    // Prints the zero-terminated string at RSI to COM1.
    private static void Print(Assembler a)
    {
        var next = a.CreateLabel();
        var end = a.CreateLabel();
        a.mov(dx, Com1);
        a.Label(ref next);
        a.lodsb();
        a.test(al, al);
        a.jz(end);
        a.@out(dx, al);
        a.jmp(next);
        a.Label(ref end);
    }

    private static byte[] Assemble(Assembler a, ulong origin)
    {
        var writer = new BytesWriter();
        a.Assemble(writer, origin);
        return writer.Bytes.ToArray();
    }

    private sealed class BytesWriter : CodeWriter
    {
        public List<byte> Bytes { get; } = [];

        public override void WriteByte(byte value) => Bytes.Add(value);
    }
}
