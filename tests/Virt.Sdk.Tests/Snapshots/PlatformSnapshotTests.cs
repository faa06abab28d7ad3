using Virt.Boot;
using Virt.Testing;
using Xunit;
using static Iced.Intel.AssemblerRegisters;

namespace Virt.Sdk.Tests.Snapshots;

/// <summary>
/// A guest that takes timer interrupts, saved mid-run on the interpreter, keeps taking them in the restored VM: the
/// PIC, the PIT and the clock come back from the snapshot, not from their power-on state.
/// </summary>
public sealed class PlatformSnapshotTests
{
    private const ulong Load = 0x100000;
    private const ulong Counter = 0x50000;
    private const ulong IdtRegister = 0x5F000;
    private const ulong Idt = 0x60000;
    private const int TimerVector = 0x20;
    private const ulong Total = 60;

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    /// <summary>
    /// Sets up an IDT with a handler for the PIC's IRQ 0 that counts into memory, programs the PIC and the PIT (mode 2,
    /// 11932 cycles: 10 ms), and halts until <see cref="Total"/> interrupts were counted; then exits with 7.
    /// </summary>
    private static byte[] Program() => GuestProgram.Assemble(64, Load, a =>
    {
        var handler = a.CreateLabel();
        var wait = a.CreateLabel();
        ulong gate = Idt + (TimerVector * 16);
        a.lea(rax, __[handler]);
        a.mov(rdi, gate);
        a.mov(__word_ptr[rdi], ax);
        a.mov(cx, cs);
        a.mov(__word_ptr[rdi + 2], cx);
        a.mov(__word_ptr[rdi + 4], 0x8E00); // present, DPL 0, 64-bit interrupt gate
        a.shr(rax, 16);
        a.mov(__word_ptr[rdi + 6], ax);
        a.shr(rax, 16);
        a.mov(__dword_ptr[rdi + 8], eax);
        a.mov(__dword_ptr[rdi + 12], 0);
        a.mov(rdi, IdtRegister);
        a.mov(__word_ptr[rdi], 0xFFF);
        a.mov(rax, Idt);
        a.mov(__qword_ptr[rdi + 2], rax);
        a.lidt(__[rdi]);
        foreach (var (port, value) in (ReadOnlySpan<(byte, byte)>)[(0x20, 0x11), (0x21, TimerVector), (0x21, 0x04), (0x21, 0x01), (0xA0, 0x11), (0xA1, 0x28),
            (0xA1, 0x02), (0xA1, 0x01), (0x21, 0xFE), (0xA1, 0xFF), (0x43, 0x34), (0x40, 0x9C), (0x40, 0x2E)])
        {
            a.mov(al, value);
            a.@out(port, al);
        }

        a.sti();
        a.Label(ref wait);
        a.hlt();
        a.mov(rax, __qword_ptr[Counter]);
        a.cmp(rax, (int)Total);
        a.jb(wait);
        a.cli();
        a.mov(dx, VirtualMachineBuilder.DefaultDebugExitPort);
        a.mov(al, 7);
        a.@out(dx, al);
        a.hlt();

        a.Label(ref handler);
        a.push(rax);
        a.inc(__qword_ptr[Counter]);
        a.mov(al, 0x20);
        a.@out(0x20, al); // non-specific EOI
        a.pop(rax);
        a.iretq();
    });

    [Fact]
    public async Task Guest_counting_pit_interrupts_keeps_counting_after_restore_on_the_interpreter()
    {
        using var dir = new TempDirectory();
        string path = Path.Combine(dir.Path, "timer.snap");
        ulong saved;
        await using (var vm = FlatGuestVm.Builder("interpreter").WithInterruptController().WithDebugExit()
            .WithFlatBinary(Program(), new GuestAddress(Load)).WithEntryPoint(new GuestAddress(Load), StartMode.Long64).Build())
        {
            await vm.StartAsync(Ct);
            var deadline = DateTime.UtcNow.AddMinutes(2);
            while (vm.Memory.Read<ulong>(new GuestAddress(Counter)) < 20 && DateTime.UtcNow < deadline)
            {
                await Task.Delay(5, Ct);
            }

            await vm.PauseAsync(Ct);
            saved = vm.Memory.Read<ulong>(new GuestAddress(Counter));
            Assert.InRange(saved, 20UL, Total - 10);
            await vm.SaveSnapshotAsync(path, Ct);
            await vm.StopAsync(Ct);
        }

        await using var restored = await VirtualMachine.RestoreAsync(path, b => b.WithInterpreter(), Ct);
        Assert.Equal(saved, restored.Memory.Read<ulong>(new GuestAddress(Counter)));
        var started = DateTime.UtcNow;
        var exit = await restored.RunAsync(Ct).WaitAsync(TimeSpan.FromMinutes(2), Ct);
        var elapsed = DateTime.UtcNow - started;
        Assert.True(exit.Reason == StopReason.DebugExit && exit.ExitCode == 7, exit.Description);
        Assert.Equal(Total, restored.Memory.Read<ulong>(new GuestAddress(Counter)));

        // The remaining interrupts came at the PIT's pace (10 ms each), not all at once as a clock that jumped would give.
        Assert.True(elapsed >= TimeSpan.FromMilliseconds((double)(Total - saved - 2) * 10 * 0.8), $"{Total - saved} interrupts took {elapsed}");
    }
}
