using Virt.Sandbox.Machine;
using Virt.X86;
using Xunit;

namespace Virt.Sandbox.Tests;

/// <summary>
/// The image's per-page flags: pages added in any order (a crafted ELF need not sort its segments) come out sorted, a
/// page added twice gets the union of the permissions with NX only when neither allows execution, and runs of
/// consecutive pages are found; checked against a dictionary model.
/// </summary>
public sealed class ImagePagesTests
{
    [Theory]
    [InlineData(1, false)]
    [InlineData(2, false)]
    [InlineData(3, true)]
    public void Pages_merge_in_any_order_into_sorted_runs_with_the_union_of_their_permissions(int seed, bool ascending)
    {
        var random = new Random(seed);
        var pages = new AddressSpace.ImagePages();
        var model = new Dictionary<ulong, PageFlags>();
        PageFlags[] choices =
        [
            PageFlags.Present | PageFlags.User,
            PageFlags.Present | PageFlags.User | PageFlags.NoExecute,
            PageFlags.Present | PageFlags.User | PageFlags.Writable | PageFlags.Dirty | PageFlags.NoExecute,
        ];
        ulong next = 0x400;
        for (int step = 0; step < 2000; step++)
        {
            ulong vpn = ascending ? next += (ulong)random.Next(0, 3) : 0x400 + (ulong)random.Next(600);
            var f = choices[random.Next(choices.Length)];
            pages.Merge(vpn, f);
            model[vpn] = model.TryGetValue(vpn, out var old)
                ? ((old | f) & ~PageFlags.NoExecute) | (old & f & PageFlags.NoExecute)
                : f;
        }

        var sorted = model.Keys.Order().ToArray();
        Assert.Equal(sorted.Length, pages.Count);
        int runs = 0;
        for (int i = 0, n; i < pages.Count; i += n, runs++)
        {
            n = pages.RunLength(i);
            var flags = pages.FlagsOf(i, n);
            for (int k = 0; k < n; k++)
            {
                Assert.Equal(sorted[i + k], pages.VpnAt(i + k));
                Assert.Equal(model[sorted[i + k]], flags[k]);
                Assert.True(k == 0 || sorted[i + k] == sorted[i + k - 1] + 1);
            }

            Assert.True(i + n == pages.Count || sorted[i + n] != sorted[i + n - 1] + 1, "a run stopped before its last consecutive page");
        }

        Assert.True(runs > 1 || ascending, "the model should have gaps");
    }
}
