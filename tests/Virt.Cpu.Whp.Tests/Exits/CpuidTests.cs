using Virt.Cpu;
using Virt.Cpu.Whp;
using Xunit;

namespace Virt.Cpu.Whp.Tests.Exits;

public sealed class CpuidTests
{
    private static WHV_X64_CPUID_ACCESS_CONTEXT Request(uint function, uint index = 0) => new()
    {
        Rax = function,
        Rcx = index,
        DefaultResultRax = 0xD0,
        DefaultResultRbx = 0x0300_0000 | 0xD1, // hypervisor default: APIC ID 3
        DefaultResultRcx = 0xD2,
        DefaultResultRdx = 0xD3,
    };

    [Fact]
    public void Leaf_in_the_table_is_answered_from_the_table()
    {
        var table = new[] { new CpuidEntry(0x8000_0008, 0, 0, 1, 2, 3, 4) };
        Assert.Equal(new ExitTranslator.CpuidResult(1, 2, 3, 4), ExitTranslator.AnswerCpuid(Request(0x8000_0008), table));
    }

    [Fact]
    public void Leaf_missing_from_the_table_gets_the_hypervisor_default()
    {
        Assert.Equal(new ExitTranslator.CpuidResult(0xD0, 0x0300_00D1, 0xD2, 0xD3), ExitTranslator.AnswerCpuid(Request(0x4000_0000), []));
    }

    [Fact]
    public void Sub_leaf_selects_among_indexed_entries()
    {
        var table = new[]
        {
            new CpuidEntry(7, 0, CpuidEntry.SignificantIndex, 1, 0x10, 0, 0),
            new CpuidEntry(7, 1, CpuidEntry.SignificantIndex, 0, 0x20, 0, 0),
        };
        Assert.Equal(0x20u, ExitTranslator.AnswerCpuid(Request(7, 1), table).Ebx);
        Assert.Equal(0x10u, ExitTranslator.AnswerCpuid(Request(7, 0), table).Ebx);
        Assert.Equal(0x0300_00D1u, ExitTranslator.AnswerCpuid(Request(7, 2), table).Ebx);
    }

    [Fact]
    public void Sub_leaf_is_ignored_for_leaves_without_sub_leaves()
    {
        var table = new[] { new CpuidEntry(0x8000_0008, 0, 0, 0x3030, 0, 0, 0) };
        Assert.Equal(0x3030u, ExitTranslator.AnswerCpuid(Request(0x8000_0008, 5), table).Eax);
    }

    [Fact]
    public void Leaf_1_keeps_each_processors_own_apic_id()
    {
        var table = new[] { new CpuidEntry(1, 0, 0, 0x906A3, 0x0000_0800, 0x8000_0000, 0x0178_BFBF) };
        var r = ExitTranslator.AnswerCpuid(Request(1), table);
        Assert.Equal(0x0300_0800u, r.Ebx);
        Assert.Equal(0x906A3u, r.Eax);
    }

    [Fact]
    public void Feature_bits_the_hypervisor_does_not_offer_are_never_shown()
    {
        var request = Request(7) with { DefaultResultRbx = 0b1010, DefaultResultRcx = 0, DefaultResultRdx = 0xFFFF_FFFF };
        var table = new[] { new CpuidEntry(7, 0, CpuidEntry.SignificantIndex, 0, 0b1111, 0xFFFF_FFFF, 0b0110) };
        var r = ExitTranslator.AnswerCpuid(request, table);
        Assert.Equal(0b1010u, r.Ebx);
        Assert.Equal(0u, r.Ecx);
        Assert.Equal(0b0110u, r.Edx);
    }

    [Theory]
    [InlineData(0u)]
    [InlineData(1u << 27)]
    public void Osxsave_follows_the_guests_cr4_as_the_hypervisor_reports_it(uint defaultOsxsave)
    {
        var request = Request(1) with { DefaultResultRcx = 0xFFFF_FFFF & ~(1u << 27) | defaultOsxsave };
        var table = new[] { new CpuidEntry(1, 0, 0, 0, 0, (1u << 27) | (1u << 26), 0) };
        Assert.Equal((1u << 26) | defaultOsxsave, ExitTranslator.AnswerCpuid(request, table).Ecx);
    }

    [Fact]
    public void Xsave_area_size_comes_from_the_hypervisor()
    {
        var request = Request(0xD) with { DefaultResultRbx = 0x240 };
        var table = new[] { new CpuidEntry(0xD, 0, CpuidEntry.SignificantIndex, 7, 0x988, 0xA88, 0) };
        var r = ExitTranslator.AnswerCpuid(request, table);
        Assert.Equal((7u, 0x240u, 0xA88u), (r.Eax, r.Ebx, r.Ecx));
    }

    [Fact]
    public void Topology_leaf_keeps_each_processors_own_x2apic_id()
    {
        var table = new[] { new CpuidEntry(0xB, 0, CpuidEntry.SignificantIndex, 1, 1, 0x100, 0) };
        Assert.Equal(0xD3u, ExitTranslator.AnswerCpuid(Request(0xB), table).Edx);
    }

    [Fact]
    public void Policy_sets_the_hypervisor_bit_and_removes_vmx()
    {
        var leaves = new[] { new CpuidEntry(1, 0, 0, 0, 0, 1u << 5, 0) };
        var e = Assert.Single(CpuidPolicy.Apply(leaves, []));
        Assert.Equal(1u << 31, e.Ecx);
    }

    [Fact]
    public void Policy_removes_masked_features_from_the_right_sub_leaf()
    {
        var leaves = new[]
        {
            new CpuidEntry(7, 0, CpuidEntry.SignificantIndex, 0, 0xFFFF_FFFF, 0, 0),
            new CpuidEntry(7, 1, CpuidEntry.SignificantIndex, 0, 0xFFFF_FFFF, 0, 0),
            new CpuidEntry(1, 0, 0, 0, 0, 0xFFFF_FFFF, 0),
        };
        var result = CpuidPolicy.Apply(leaves, [CpuidFeature.Avx2, CpuidFeature.Xsave]);
        Assert.Equal(~(1u << 5), result[0].Ebx);
        Assert.Equal(0xFFFF_FFFFu, result[1].Ebx);
        Assert.Equal(~((1u << 26) | (1u << 5)), result[2].Ecx);
    }

    [Fact]
    public void Exit_list_names_each_leaf_once_in_order()
    {
        var table = new[]
        {
            new CpuidEntry(7, 1, 1, 0, 0, 0, 0), new CpuidEntry(0, 0, 0, 0, 0, 0, 0),
            new CpuidEntry(7, 0, 1, 0, 0, 0, 0), new CpuidEntry(0x8000_0000, 0, 0, 0, 0, 0, 0),
        };
        Assert.Equal([0u, 7u, 0x8000_0000u], CpuidPolicy.ExitList(table));
    }

    [Fact]
    public void Host_leaves_start_with_leaf_0_on_x86_hosts()
    {
        if (!System.Runtime.Intrinsics.X86.X86Base.IsSupported)
        {
            Assert.Skip("The host processor is not x86; CPUID cannot be read.");
        }

        var host = CpuidPolicy.ReadHost();
        Assert.Equal(0u, host[0].Function);
        Assert.Contains(host, e => e.Function == 1);
        Assert.Contains(host, e => e.Function == 0x8000_0000);
    }
}
