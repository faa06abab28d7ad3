using Virt.Testing;
using static Iced.Intel.AssemblerRegisters;

namespace Virt.Orleans.Tests;

/// <summary>
/// A flat long-mode guest for the grain tests: prints <c>ready</c> once on COM1, then counts in guest memory forever;
/// each round it polls the UART and echoes a received byte upper-cased (lower-case ASCII letters), so the console
/// answers requests. A guest restored from a snapshot goes on counting and never prints <c>ready</c> again.
/// </summary>
internal static class CounterGuest
{
    public const ulong Load = 0x100000;
    public const ulong Counter = 0x50000;
    public const string Ready = "ready\n";
    private const ushort Com1 = 0x3F8;
    private const ushort LineStatus = Com1 + 5;

    public static byte[] Image { get; } = GuestProgram.Assemble(64, Load, a =>
    {
        var loop = a.CreateLabel();
        var emit = a.CreateLabel();
        a.mov(dx, Com1);
        foreach (char c in Ready)
        {
            a.mov(al, (byte)c);
            a.@out(dx, al);
        }

        a.Label(ref loop);
        a.inc(__qword_ptr[Counter]);
        a.mov(dx, LineStatus);
        a.@in(al, dx);
        a.test(al, 1); // data ready
        a.jz(loop);
        a.mov(dx, Com1);
        a.@in(al, dx);
        a.cmp(al, (byte)'a');
        a.jb(emit);
        a.cmp(al, (byte)'z');
        a.ja(emit);
        a.sub(al, 0x20);
        a.Label(ref emit);
        a.@out(dx, al);
        a.jmp(loop);
    });

    public static VirtualMachineSpec Spec(VirtualMachineBackend backend = VirtualMachineBackend.Interpreter) => new()
    {
        MemoryMiB = 16,
        Backend = backend,
        FlatImage = Image,
        LoadAddress = Load,
    };

    /// <summary>A guest that prints <c>bye</c> and stops itself through the debug-exit port with <paramref name="code"/>.</summary>
    public static VirtualMachineSpec Exiting(byte code) => new()
    {
        MemoryMiB = 16,
        Backend = VirtualMachineBackend.Interpreter,
        DebugExit = true,
        LoadAddress = Load,
        FlatImage = GuestProgram.Assemble(64, Load, a =>
        {
            a.mov(dx, Com1);
            foreach (char c in "bye\n")
            {
                a.mov(al, (byte)c);
                a.@out(dx, al);
            }

            a.mov(dx, VirtualMachineBuilder.DefaultDebugExitPort);
            a.mov(al, code);
            a.@out(dx, al);
            a.hlt();
        }),
    };
}
