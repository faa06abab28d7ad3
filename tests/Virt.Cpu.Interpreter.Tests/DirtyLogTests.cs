using static Iced.Intel.AssemblerRegisters;

namespace Virt.Cpu.Interpreter.Tests;

public sealed class DirtyLogTests
{
    [Fact]
    public void Guest_writes_appear_in_the_dirty_log_once_per_collection()
    {
        using var m = Machine.Long64(a =>
        {
            a.mov(ebx, 0x123000);
            a.mov(__qword_ptr[rbx], 1);
            a.hlt();
            a.mov(__qword_ptr[rbx + 8], 2);
            a.hlt();
        });
        var log = Assert.IsAssignableFrom<IDirtyPageLog>(m.Partition);
        var bitmap = new ulong[m.Memory.DirtyBitmapLength(0)];
        log.CollectDirtyPages(0, bitmap); // drop the set-up writes

        Assert.Equal(VcpuExitReason.Halt, m.Run().Reason);
        log.CollectDirtyPages(0, bitmap);
        Assert.NotEqual(0UL, bitmap[0x123 / 64] & (1UL << (0x123 % 64)));

        log.CollectDirtyPages(0, bitmap);
        Assert.Equal(0UL, bitmap[0x123 / 64] & (1UL << (0x123 % 64)));

        Assert.Equal(VcpuExitReason.Halt, m.Run().Reason);
        log.CollectDirtyPages(0, bitmap);
        Assert.NotEqual(0UL, bitmap[0x123 / 64] & (1UL << (0x123 % 64)));
    }
}
