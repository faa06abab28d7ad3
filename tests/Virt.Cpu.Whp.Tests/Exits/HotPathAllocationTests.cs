using Virt.Cpu.Whp;
using Virt.Memory;
using Xunit;

namespace Virt.Cpu.Whp.Tests.Exits;

/// <summary>The per-exit work of the run loop (translation and the emulator callbacks) allocates nothing.</summary>
public sealed class HotPathAllocationTests
{
    [Fact]
    public void Port_write_exit_translation_and_emulation_do_not_allocate()
    {
        using var memory = GuestMemory.CreateRam(0x10000);
        var session = new EmulationSession(memory);
        var exit = default(WHV_RUN_VP_EXIT_CONTEXT);
        exit.ExitReason = WhvRunVpExitReason.X64IoPortAccess;
        exit.IoPortAccess.AccessInfo = 1 | (1 << 1);
        exit.IoPortAccess.PortNumber = 0x3F8;
        var success = new WHV_EMULATOR_STATUS { AsUINT32 = WHV_EMULATOR_STATUS.EmulationSuccessful };

        int Once()
        {
            var t = ExitTranslator.Translate(exit, exitRequested: false);
            session.Begin(replay: false);
            var io = new WHV_EMULATOR_IO_ACCESS_INFO { Direction = 1, Port = 0x3F8, AccessSize = 1, Data = 0x41 };
            _ = session.IoPort(ref io);
            return (int)t.Action + (session.Finish(HResult.S_OK, success, exit)?.Size ?? 0);
        }

        for (int i = 0; i < 100; i++)
        {
            Once();
        }

        long before = GC.GetAllocatedBytesForCurrentThread();
        int sum = 0;
        for (int i = 0; i < 1000; i++)
        {
            sum += Once();
        }

        Assert.Equal(0, GC.GetAllocatedBytesForCurrentThread() - before);
        Assert.Equal(1000 * ((int)ExitAction.EmulateIo + 1), sum);
    }
}
