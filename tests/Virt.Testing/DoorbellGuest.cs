using System.Buffers.Binary;
using System.Diagnostics;
using Iced.Intel;
using Virt.Boot;
using Virt.Devices;
using static Iced.Intel.AssemblerRegisters;

namespace Virt.Testing;

/// <summary>
/// A flat long-mode guest that sleeps (<c>HLT</c> with interrupts on) and answers a doorbell: the host raises ISA line
/// <see cref="Irq"/> (through the 8259 PIC, vector <c>0x20 + Irq</c>), the guest's handler reads the doorbell port,
/// which acknowledges and lowers the line, and sleeps again. The time from the ring to the acknowledgement is the
/// guest's request latency: how long a sleeping VM takes to get a CPU, run a few instructions and leave the guest.
/// </summary>
/// <remarks>
/// Wire it into a VM with interrupt controllers: the device on <see cref="Port"/> and <see cref="Irq"/>, and each of
/// <see cref="Segments"/> as a flat binary, entry point <see cref="Entry"/> in 64-bit mode.
/// </remarks>
public static class DoorbellGuest
{
    /// <summary>The doorbell's I/O port.</summary>
    public const ushort Port = 0x510;

    /// <summary>The doorbell's ISA interrupt line.</summary>
    public const uint Irq = 5;

    /// <summary>Where the main loop starts.</summary>
    public const ulong Entry = 0x100000;

    private const ulong Idt = 0x101000;
    private const ulong IdtPointer = 0x102000;
    private const ulong Handler = 0x103000;
    private const int Vector = 0x20 + (int)Irq;

    /// <summary>The guest's code and tables: each image and the guest-physical address it loads at.</summary>
    public static IReadOnlyList<(byte[] Image, ulong Address)> Segments { get; } = Build();

    private static (byte[] Image, ulong Address)[] Build()
    {
        // Only the doorbell's vector has a gate, and only its line is unmasked.
        var idt = new byte[256 * 16];
        BinaryPrimitives.WriteUInt64LittleEndian(idt.AsSpan(Vector * 16), (Handler & 0xFFFF) | ((ulong)ProcessorSetup.KernelCode64 << 16) | (0x8EUL << 40) | (((Handler >> 16) & 0xFFFF) << 48));
        BinaryPrimitives.WriteUInt64LittleEndian(idt.AsSpan((Vector * 16) + 8), Handler >> 32);
        var pointer = new byte[10];
        BinaryPrimitives.WriteUInt16LittleEndian(pointer, (ushort)(idt.Length - 1));
        BinaryPrimitives.WriteUInt64LittleEndian(pointer.AsSpan(2), Idt);

        var main = GuestProgram.Assemble(64, Entry, a =>
        {
            a.mov(rax, IdtPointer);
            a.lidt(__[rax]);
            foreach (var (p, value) in new (int, int)[] { (0x20, 0x11), (0x21, 0x20), (0x21, 0x04), (0x21, 0x01), (0x21, 0xFF & ~(1 << (int)Irq)), (0xA0, 0x11), (0xA1, 0x28), (0xA1, 0x02), (0xA1, 0x01), (0xA1, 0xFF) })
            {
                a.mov(al, (byte)value);
                a.@out((byte)p, al);
            }

            a.mov(dx, Port);
            a.@out(dx, al);     // ready: the PIC is programmed (an edge before that would be lost)
            var sleep = a.CreateLabel();
            a.Label(ref sleep);
            a.sti();
            a.hlt();
            a.jmp(sleep);
        });
        var handler = GuestProgram.Assemble(64, Handler, a =>
        {
            a.push(rax);
            a.push(rdx);
            a.mov(dx, Port);
            a.@in(al, dx);      // acknowledges: the doorbell lowers its line
            a.mov(al, 0x20);
            a.@out(0x20, al);   // non-specific EOI to the master PIC
            a.pop(rdx);
            a.pop(rax);
            a.iretq();
        });
        return [(main, Entry), (idt, Idt), (pointer, IdtPointer), (handler, Handler)];
    }
}

/// <summary>
/// The doorbell of <see cref="DoorbellGuest"/>: <see cref="RequestAsync"/> rings it and completes when the guest
/// acknowledges, with the time that took. Requests wait until the guest said it is ready; one request at a time.
/// </summary>
public sealed class DoorbellDevice(IInterruptLine line) : IPortIoDevice
{
    private readonly TaskCompletionSource _ready = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private TaskCompletionSource<TimeSpan>? _pending;
    private long _rungAt;
    private int _acknowledged;

    /// <summary>Acknowledgements the guest made.</summary>
    public int Acknowledged => Volatile.Read(ref _acknowledged);

    /// <summary>Rings the doorbell and waits for the guest's acknowledgement; returns the time between the two.</summary>
    /// <exception cref="InvalidOperationException">A request is already waiting.</exception>
    public async Task<TimeSpan> RequestAsync(CancellationToken cancellationToken = default)
    {
        await _ready.Task.WaitAsync(cancellationToken).ConfigureAwait(false);
        var pending = new TaskCompletionSource<TimeSpan>(TaskCreationOptions.RunContinuationsAsynchronously);
        if (Interlocked.CompareExchange(ref _pending, pending, null) is not null)
        {
            throw new InvalidOperationException("A doorbell request is already waiting for the guest.");
        }

        Volatile.Write(ref _rungAt, Stopwatch.GetTimestamp());
        line.Raise();
        return await pending.Task.WaitAsync(cancellationToken).ConfigureAwait(false);
    }

    /// <inheritdoc/>
    public void Read(ushort offset, Span<byte> data)
    {
        long now = Stopwatch.GetTimestamp();
        line.Lower();
        Interlocked.Increment(ref _acknowledged);
        data.Clear();
        Interlocked.Exchange(ref _pending, null)?.TrySetResult(Stopwatch.GetElapsedTime(Volatile.Read(ref _rungAt), now));
    }

    /// <inheritdoc/>
    public void Write(ushort offset, ReadOnlySpan<byte> data) => _ready.TrySetResult();
}
