using Virt.Cpu;
using Xunit;

namespace Virt.Abstractions.Tests;

public sealed class CpuidEntryTests
{
    [Fact]
    public void Without_clears_the_feature_bit_in_its_register_only()
    {
        var leaf1 = new CpuidEntry(1, 0, 0, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF);
        var cleared = leaf1.Without(CpuidFeature.Xsave);
        Assert.Equal(0xFFFFFFFF & ~(1u << 26), cleared.Ecx);
        Assert.Equal(0xFFFFFFFFu, cleared.Eax);
        Assert.Equal(0xFFFFFFFFu, cleared.Ebx);
        Assert.Equal(0xFFFFFFFFu, cleared.Edx);
    }

    [Fact]
    public void A_feature_applies_to_every_sub_leaf_unless_the_index_is_significant()
    {
        var feature = new CpuidFeature(7, 0, CpuidRegister.Ebx, 3);
        var plain = new CpuidEntry(7, 5, 0, 0, 0xFF, 0, 0);
        var indexed0 = new CpuidEntry(7, 0, CpuidEntry.SignificantIndex, 0, 0xFF, 0, 0);
        var indexed1 = new CpuidEntry(7, 1, CpuidEntry.SignificantIndex, 0, 0xFF, 0, 0);
        var otherLeaf = new CpuidEntry(6, 0, 0, 0, 0xFF, 0, 0);

        var masked = CpuidEntry.WithoutAll([plain, indexed0, indexed1, otherLeaf], [feature]);

        Assert.Equal(0xF7u, masked[0].Ebx);
        Assert.Equal(0xF7u, masked[1].Ebx);
        Assert.Equal(0xFFu, masked[2].Ebx);
        Assert.Equal(0xFFu, masked[3].Ebx);
        Assert.False(indexed1.Holds(feature));
        Assert.True(plain.Holds(feature));
    }
}
