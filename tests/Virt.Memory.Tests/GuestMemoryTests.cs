using Virt.Memory;
using Xunit;

namespace Virt.Memory.Tests;

public sealed class GuestMemoryTests
{
    private static GuestMemory TwoRegionsWithHole() => GuestMemory.Create(
        GuestMemoryRegionSpec.Ram(new GuestAddress(0), 0x10000),
        GuestMemoryRegionSpec.Ram(new GuestAddress(0x20000), 0x10000),
        GuestMemoryRegionSpec.Rom(new GuestAddress(0xF0000), 0x10000));

    [Fact]
    public void Read_and_write_at_both_ends_of_a_region_round_trip()
    {
        using var m = TwoRegionsWithHole();
        m.Write(new GuestAddress(0), 0x1122334455667788UL);
        m.Write(new GuestAddress(0xFFF8), 0x8877665544332211UL);
        m.Write(new GuestAddress(0x20000), (byte)0xAB);
        m.Write(new GuestAddress(0x2FFFF), (byte)0xCD);
        Assert.Equal(0x1122334455667788UL, m.Read<ulong>(new GuestAddress(0)));
        Assert.Equal(0x8877665544332211UL, m.Read<ulong>(new GuestAddress(0xFFF8)));
        Assert.Equal(0xAB, m.Read<byte>(new GuestAddress(0x20000)));
        Assert.Equal(0xCD, m.Read<byte>(new GuestAddress(0x2FFFF)));
    }

    [Fact]
    public void Access_across_a_hole_fails_without_partial_write()
    {
        using var m = TwoRegionsWithHole();
        var ex = Assert.Throws<GuestMemoryException>(() => m.Write(new GuestAddress(0xFFFC), 0x1122334455667788UL));
        Assert.Contains("0xfffc", ex.Message, StringComparison.Ordinal);
        Assert.Equal(0u, m.Read<uint>(new GuestAddress(0xFFFC)));
        Assert.False(m.TryRead(new GuestAddress(0xFFFC), new byte[8]));
        Assert.False(m.Contains(new GuestAddress(0xFFFC), 8));
    }

    [Fact]
    public void Access_in_a_hole_or_past_the_end_fails_cleanly()
    {
        using var m = TwoRegionsWithHole();
        Assert.Throws<GuestMemoryException>(() => m.Read<uint>(new GuestAddress(0x10000)));
        Assert.Throws<GuestMemoryException>(() => m.Read<uint>(new GuestAddress(0x100000)));
        Assert.Throws<GuestMemoryException>(() => m.Read<ulong>(new GuestAddress(ulong.MaxValue - 3)));
        Assert.False(m.TryGetSpan(new GuestAddress(0x2FFF0), 0x20, false, out _));
        Assert.Throws<GuestMemoryException>(() => m.GetSpan(new GuestAddress(0x0FFF0), 0x20, false));
        Assert.False(m.TryGetSpan(new GuestAddress(0), -1, false, out _));
    }

    [Fact]
    public void Rom_rejects_writes_but_the_host_can_load_it()
    {
        using var m = TwoRegionsWithHole();
        var ex = Assert.Throws<GuestMemoryException>(() => m.Write(new GuestAddress(0xF0000), 1u));
        Assert.Contains("read-only", ex.Message, StringComparison.Ordinal);
        Assert.False(m.TryGetSpan(new GuestAddress(0xF0000), 4, forWrite: true, out _));
        m.LoadRom(new GuestAddress(0xFFFF0), [0xEA, 0x00, 0x00]);
        Assert.Equal(0xEA, m.Read<byte>(new GuestAddress(0xFFFF0)));
        Assert.True(m.IsReadOnly(new GuestAddress(0xF0000)));
        Assert.True(m.Regions[2].IsReadOnly);
    }

    [Fact]
    public void Span_access_is_zero_copy()
    {
        using var m = GuestMemory.CreateRam(0x4000);
        var span = m.GetSpan(new GuestAddress(0x1000), 16, forWrite: true);
        span[3] = 42;
        Assert.Equal(42, m.Read<byte>(new GuestAddress(0x1003)));
    }

    [Fact]
    public void Contiguous_regions_can_be_crossed()
    {
        using var m = GuestMemory.Create(
            GuestMemoryRegionSpec.Ram(new GuestAddress(0), 0x1000),
            GuestMemoryRegionSpec.Ram(new GuestAddress(0x1000), 0x1000));
        m.Write(new GuestAddress(0xFFE), 0xAABBCCDDu);
        Assert.Equal(0xAABBCCDDu, m.Read<uint>(new GuestAddress(0xFFE)));
        Assert.False(m.TryGetSpan(new GuestAddress(0xFFE), 4, false, out _));
    }

    [Fact]
    public void Dispose_twice_is_harmless_and_later_access_throws()
    {
        var m = GuestMemory.CreateRam(0x1000);
        m.Dispose();
        m.Dispose();
        Assert.True(m.IsDisposed);
        Assert.Throws<ObjectDisposedException>(() => m.Read<byte>(new GuestAddress(0)));
    }

    [Theory]
    [InlineData(0UL, 0UL, "size 0")]
    [InlineData(0x800UL, 0x1000UL, "multiples of 4 KiB")]
    [InlineData(0UL, 0x1800UL, "multiples of 4 KiB")]
    public void Invalid_regions_are_refused_with_a_reason(ulong start, ulong size, string expected)
    {
        var ex = Assert.Throws<ArgumentException>(() => GuestMemory.Create(new GuestMemoryRegionSpec(new GuestAddress(start), size, false)));
        Assert.Contains(expected, ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Overlapping_regions_are_refused()
    {
        var ex = Assert.Throws<ArgumentException>(() => GuestMemory.Create(
            GuestMemoryRegionSpec.Ram(new GuestAddress(0), 0x2000),
            GuestMemoryRegionSpec.Ram(new GuestAddress(0x1000), 0x2000)));
        Assert.Contains("overlap", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Writes_mark_pages_dirty_and_collecting_clears_them()
    {
        using var m = GuestMemory.CreateRam(0x10000);
        m.Write(new GuestAddress(0x3FFF), (ushort)1);
        var bitmap = new ulong[m.DirtyBitmapLength(0)];
        m.CollectDirtyPages(0, bitmap);
        Assert.Equal(0b11000UL, bitmap[0]);
        m.CollectDirtyPages(0, bitmap);
        Assert.Equal(0UL, bitmap[0]);
    }

    [Fact]
    public void Watched_page_write_notifies_once()
    {
        using var m = GuestMemory.CreateRam(0x10000);
        var watcher = new Recorder();
        m.SetWriteWatcher(watcher);
        Assert.True(m.WatchPage(new GuestAddress(0x2010)));
        m.Write(new GuestAddress(0x1000), 1u);
        m.Write(new GuestAddress(0x2ffe), 1u);
        m.Write(new GuestAddress(0x2000), 1u);
        Assert.Equal([new GuestAddress(0x2000)], watcher.Pages);
        Assert.False(m.IsPageWatched(new GuestAddress(0x2000)));
    }

    [Fact]
    public void Large_guest_costs_nothing_until_touched()
    {
        using var m = GuestMemory.CreateRam(16UL << 30);
        m.Write(new GuestAddress((16UL << 30) - 8), 7UL);
        Assert.Equal(7UL, m.Read<ulong>(new GuestAddress((16UL << 30) - 8)));
    }

    [Fact]
    public void Discarded_pages_read_as_zero()
    {
        using var m = GuestMemory.CreateRam(0x4000);
        m.Write(new GuestAddress(0x1000), ulong.MaxValue);
        m.DiscardPages(new GuestAddress(0x1000), 0x1000);
        Assert.Equal(0UL, m.Read<ulong>(new GuestAddress(0x1000)));
    }

    /// <summary>
    /// Memory mapped copy-on-write from a file (a restored snapshot) keeps the promise too: a discarded page reads as
    /// zero, not as the file's page again, whether the guest had written it or only read it, and leaves the
    /// resident set (a balloon that takes pages from a restored VM gives their memory back).
    /// </summary>
    [Fact]
    public void Discarded_pages_of_memory_mapped_from_a_file_read_as_zero_and_leave_the_resident_set()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "Resident pages are counted with mincore (Linux).");
        const int pages = 256;
        string path = Path.GetTempFileName();
        try
        {
            var content = new byte[pages * 4096];
            Array.Fill(content, (byte)0x5A);
            File.WriteAllBytes(path, content);
            using var file = File.OpenHandle(path, FileMode.Open, FileAccess.Read);
            using var m = GuestMemory.Create(GuestMemoryRegionSpec.FromFile(GuestAddress.Zero, pages * 4096UL, file, 0));
            var buffer = new byte[pages * 4096];
            m.Read(GuestAddress.Zero, buffer);                                  // every page read from the file
            m.Write(new GuestAddress(0x3000), ulong.MaxValue);                  // one page copied on write
            ulong before = m.ResidentBytes!.Value;
            Assert.Equal((ulong)pages * 4096, before);

            m.DiscardPages(new GuestAddress(0x2000), 0x80000);                  // 128 pages: read-only and written ones
            Assert.Equal(before - (128 * 4096), m.ResidentBytes!.Value);        // (before reading them: mincore counts the zero page once mapped)
            Assert.Equal(0UL, m.Read<ulong>(new GuestAddress(0x2000)));
            Assert.Equal(0UL, m.Read<ulong>(new GuestAddress(0x3000)));
            Assert.Equal(0UL, m.Read<ulong>(new GuestAddress(0x81000)));
            Assert.Equal(0x5A5A5A5A5A5A5A5AUL, m.Read<ulong>(new GuestAddress(0x1000)));
            Assert.Equal(0x5A5A5A5A5A5A5A5AUL, m.Read<ulong>(new GuestAddress(0x82000)));

            // Discarded pages work as RAM again, and the file is untouched.
            m.Write(new GuestAddress(0x2000), 42UL);
            Assert.Equal(42UL, m.Read<ulong>(new GuestAddress(0x2000)));
            Assert.Equal(content, File.ReadAllBytes(path));
        }
        finally
        {
            File.Delete(path);
        }
    }

    private sealed class Recorder : IGuestWriteWatcher
    {
        public List<GuestAddress> Pages { get; } = [];

        public void OnWatchedPageWritten(GuestAddress pageAddress) => Pages.Add(pageAddress);
    }
}
