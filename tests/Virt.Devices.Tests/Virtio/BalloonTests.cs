using System.Buffers.Binary;
using Virt.Devices.Virtio;
using Virt.Memory;
using Virt.Testing.Virtio;
using Xunit;

namespace Virt.Devices.Tests.Virtio;

/// <summary>The balloon against a scripted driver: pages go back to the host, hostile lists and ranges are refused.</summary>
public sealed class BalloonTests
{
    private const ulong RamSize = 0x80000;

    [Fact]
    public void Inflated_pages_are_released_in_runs_and_pages_outside_ram_are_refused()
    {
        var released = new List<(ulong Address, ulong Length)>();
        using var rig = new Rig(released);
        rig.Device.SetTargetPages(8);
        Assert.Equal(8u, BinaryPrimitives.ReadUInt32LittleEndian(rig.Driver.ReadConfig(0, 4)));

        // Pages 0x40..0x43 (a run), 0x50, and two that are not RAM.
        var list = Pfns(0x40, 0x41, 0x42, 0x43, 0x50, 0x1000, 0xFFFF_FFFF);
        var at = rig.Put(list);
        rig.Driver.Queues[0].AddChain((at, (uint)list.Length, false));
        rig.Driver.Notify(0);
        rig.Driver.Queues[0].WaitUsed();

        Assert.Equal([(0x40000UL, 0x4000UL), (0x50000UL, 0x1000UL)], released);
        Assert.Equal(5, rig.Device.ReleasedPages);
        Assert.Equal(2, rig.Logger.Messages.Count(m => m.Contains("is not guest RAM", StringComparison.Ordinal)));

        // The driver reports what the balloon holds; more pages than the guest has are refused.
        rig.Driver.WriteRegister(0x104, 5);
        Assert.Equal(5, rig.Device.ActualPages);
        rig.Driver.WriteRegister(0x104, 0x10_0000);
        Assert.Equal(5, rig.Device.ActualPages);
        Assert.False(rig.NeedsReset);
    }

    [Fact]
    public void Reported_free_ranges_are_released_in_whole_pages()
    {
        var released = new List<(ulong Address, ulong Length)>();
        using var rig = new Rig(released);
        int reporting = 3; // inflate, deflate, statistics, reporting
        rig.Driver.Queues[reporting].AddChain((new GuestAddress(0x60000), 0x2000, true), (new GuestAddress(0x70800), 0x1800, true));
        rig.Driver.Notify(reporting);
        rig.Driver.Queues[reporting].WaitUsed();

        // The second range is trimmed to the whole page inside it.
        Assert.Equal([(0x60000UL, 0x2000UL), (0x71000UL, 0x1000UL)], released);
        Assert.Equal(0x3000, rig.Device.ReportedBytes);
    }

    [Fact]
    public async Task Statistics_are_read_from_the_drivers_buffer_on_request()
    {
        using var rig = new Rig([]);
        var stats = new byte[20];
        BinaryPrimitives.WriteUInt16LittleEndian(stats, (ushort)BalloonStatistic.FreeMemory);
        BinaryPrimitives.WriteUInt64LittleEndian(stats.AsSpan(2), 123456);
        BinaryPrimitives.WriteUInt16LittleEndian(stats.AsSpan(10), (ushort)BalloonStatistic.TotalMemory);
        BinaryPrimitives.WriteUInt64LittleEndian(stats.AsSpan(12), 999999);
        var at = rig.Put(stats);
        rig.Driver.Queues[2].AddChain((at, 20, false));
        rig.Driver.Notify(2);

        // The request returns the buffer; the driver refills it with fresh values and queues it again.
        var request = rig.Device.RequestStatisticsAsync(TestContext.Current.CancellationToken);
        rig.Driver.Queues[2].WaitUsed();
        BinaryPrimitives.WriteUInt64LittleEndian(stats.AsSpan(2), 654321);
        rig.Ram.Write(at, stats);
        rig.Driver.Queues[2].AddChain((at, 20, false));
        rig.Driver.Notify(2);
        var result = await request.WaitAsync(TimeSpan.FromSeconds(30), TestContext.Current.CancellationToken);

        Assert.Equal(654321UL, result[BalloonStatistic.FreeMemory]);
        Assert.Equal(999999UL, result[BalloonStatistic.TotalMemory]);
    }

    [Fact]
    public void A_page_list_that_is_not_whole_entries_is_refused_and_the_device_keeps_working()
    {
        var released = new List<(ulong Address, ulong Length)>();
        using var rig = new Rig(released);
        var list = Pfns(0x40).Concat(new byte[] { 1, 2 }).ToArray();
        var at = rig.Put(list);
        rig.Driver.Queues[0].AddChain((at, (uint)list.Length, false));
        rig.Driver.Notify(0);
        rig.Driver.Queues[0].WaitUsed();
        Assert.Equal([(0x40000UL, 0x1000UL)], released);
        Assert.Contains(rig.Logger.Messages, m => m.Contains("not a whole number", StringComparison.Ordinal));
        Assert.False(rig.NeedsReset);
    }

    private static byte[] Pfns(params uint[] pfns)
    {
        var bytes = new byte[pfns.Length * 4];
        for (int i = 0; i < pfns.Length; i++)
        {
            BinaryPrimitives.WriteUInt32LittleEndian(bytes.AsSpan(i * 4), pfns[i]);
        }

        return bytes;
    }

    private sealed class Rig : VirtioTestRig
    {
        public Rig(List<(ulong Address, ulong Length)> released)
            : this(new BalloonHolder(released))
        {
        }

        private Rig(BalloonHolder holder)
            : base(holder.Device, RamSize)
        {
            Device = holder.Device;
            Driver.Initialize();
        }

        public VirtioBalloonDevice Device { get; }
    }

    private sealed class BalloonHolder(List<(ulong Address, ulong Length)> released)
    {
        public VirtioBalloonDevice Device { get; } = new(RamSize, (address, length) =>
        {
            lock (released)
            {
                released.Add((address.Value, length));
            }
        }, statistics: true);
    }
}
