using Virt.Memory;
using Virt.Sandbox.Machine;
using Virt.X86;
using Xunit;

namespace Virt.Sandbox.Tests;

/// <summary>
/// The reserved region's bookkeeping of <c>mmap(PROT_NONE)</c> ranges: reservations, <c>MAP_FIXED</c> over them, and
/// <c>munmap</c> of parts (which splits a range), against a model that keeps every reserved page in a set; and a saved
/// state that later changes do not reach.
/// </summary>
public sealed class ReservedRegionTests
{
    private const ulong Page = 4096;

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    public void Reserve_map_fixed_and_unmap_keep_the_reserved_pages_of_a_page_set_model(int seed)
    {
        using var memory = GuestMemory.CreateRam(1 << 20);
        var region = new ReservedRegion(memory, new ArenaAllocator(memory, 0, 16), 0, 0, 0, PageFlags.Present, enabled: true);
        var model = new HashSet<ulong>();
        var random = new Random(seed);
        ulong window = ReservedRegion.Start + (64 * Page); // keep the operations in 256 pages so they overlap
        for (int step = 0; step < 400; step++)
        {
            ulong at = window + ((ulong)random.Next(256) * Page);
            ulong pages = (ulong)random.Next(1, 24);
            switch (random.Next(3))
            {
                case 0:
                    // A hint: taken when free, else somewhere below everything reserved.
                    ulong got = region.Reserve(at, pages);
                    Assert.NotEqual(0UL, got);
                    Assert.True(got == at || !IsFree(model, at, pages), $"step {step}: a free hint was not taken");
                    Assert.True(IsFree(model, got, pages), $"step {step}: reserved over reserved pages");
                    Mark(model, got, pages, true);
                    break;
                case 1:
                    Assert.True(region.MapFixed(at, pages, accessible: false));
                    Mark(model, at, pages, true);
                    break;
                default:
                    region.Unmap(at, pages);
                    Mark(model, at, pages, false);
                    break;
            }

            for (ulong p = 0; p < 300; p++)
            {
                ulong va = window - (8 * Page) + (p * Page);
                Assert.Equal(model.Contains(va >> 12), region.IsReserved(va, 1));
                Assert.Equal(!model.Contains(va >> 12), region.IsFree(va, 1));
            }

            // The ranges listed for /proc/self/maps cover exactly the model's pages, in order, without overlap.
            var listed = new HashSet<ulong>();
            ulong last = 0;
            foreach (var (start, end, _) in region.Ranges())
            {
                Assert.True(start < end && start >= last, $"step {step}: ranges out of order or empty");
                last = end;
                for (ulong va = start; va < end; va += Page)
                {
                    Assert.True(listed.Add(va >> 12));
                }
            }

            Assert.True(listed.SetEquals(model), $"step {step}: listed ranges differ from the reserved pages");
        }
    }

    [Fact]
    public void A_saved_state_is_not_changed_by_later_reservations_and_restores_them()
    {
        using var memory = GuestMemory.CreateRam(1 << 20);
        var region = new ReservedRegion(memory, new ArenaAllocator(memory, 0, 16), 0, 0, 0, PageFlags.Present, enabled: true);
        ulong a = ReservedRegion.Start + (100 * Page);
        Assert.True(region.MapFixed(a, 10, accessible: false));
        var saved = region.Save();
        region.Unmap(a + (2 * Page), 3);
        Assert.True(region.MapFixed(a + (50 * Page), 4, accessible: false));
        Assert.False(region.IsReserved(a + (2 * Page), 1));

        region.Restore(saved);
        Assert.True(region.IsReserved(a, 10));
        Assert.True(region.IsFree(a + (50 * Page), 4));
        region.Unmap(a, 10);
        region.Restore(saved);
        Assert.True(region.IsReserved(a, 10));
    }

    private static bool IsFree(HashSet<ulong> model, ulong at, ulong pages)
    {
        for (ulong p = 0; p < pages; p++)
        {
            if (model.Contains((at >> 12) + p))
            {
                return false;
            }
        }

        return true;
    }

    private static void Mark(HashSet<ulong> model, ulong at, ulong pages, bool reserved)
    {
        for (ulong p = 0; p < pages; p++)
        {
            if (reserved)
            {
                model.Add((at >> 12) + p);
            }
            else
            {
                model.Remove((at >> 12) + p);
            }
        }
    }
}
