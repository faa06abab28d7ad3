using Xunit;

namespace Virt.X86.Tests.Registers;

/// <summary>The register bits are the manuals' bit positions; a typo here would be a wrong guest state everywhere.</summary>
public sealed class RegisterBitTests
{
    [Fact]
    public void Cr0_bits_are_at_their_architectural_positions()
    {
        Assert.Equal(1UL << 0, Cr0.ProtectionEnable);
        Assert.Equal(1UL << 1, Cr0.MonitorCoprocessor);
        Assert.Equal(1UL << 2, Cr0.Emulation);
        Assert.Equal(1UL << 3, Cr0.TaskSwitched);
        Assert.Equal(1UL << 4, Cr0.ExtensionType);
        Assert.Equal(1UL << 5, Cr0.NumericError);
        Assert.Equal(1UL << 16, Cr0.WriteProtect);
        Assert.Equal(1UL << 18, Cr0.AlignmentMask);
        Assert.Equal(1UL << 29, Cr0.NotWriteThrough);
        Assert.Equal(1UL << 30, Cr0.CacheDisable);
        Assert.Equal(1UL << 31, Cr0.Paging);
    }

    [Fact]
    public void Cr4_bits_are_at_their_architectural_positions()
    {
        Assert.Equal(1UL << 4, Cr4.Pse);
        Assert.Equal(1UL << 5, Cr4.Pae);
        Assert.Equal(1UL << 7, Cr4.PageGlobalEnable);
        Assert.Equal(1UL << 9, Cr4.OsFxsr);
        Assert.Equal(1UL << 10, Cr4.OsXmmExcpt);
        Assert.Equal(1UL << 12, Cr4.La57);
        Assert.Equal(1UL << 17, Cr4.Pcide);
        Assert.Equal(1UL << 18, Cr4.OsXsave);
        Assert.Equal(1UL << 20, Cr4.Smep);
        Assert.Equal(1UL << 21, Cr4.Smap);
        Assert.Equal(1UL << 22, Cr4.Pke);
    }

    [Fact]
    public void Efer_bits_are_at_their_architectural_positions()
    {
        Assert.Equal(1UL << 0, Efer.SyscallEnable);
        Assert.Equal(1UL << 8, Efer.LongModeEnable);
        Assert.Equal(1UL << 10, Efer.LongModeActive);
        Assert.Equal(1UL << 11, Efer.NoExecuteEnable);
        Assert.Equal(0xD01UL, Efer.SyscallEnable | Efer.LongModeEnable | Efer.LongModeActive | Efer.NoExecuteEnable);
    }

    [Fact]
    public void Rflags_bits_and_masks_match_the_manual()
    {
        Assert.Equal(0x202UL, Rflags.InterruptEnable | Rflags.Fixed);
        Assert.Equal(0x8D5UL, Rflags.Status);
        Assert.Equal(0x3000UL, Rflags.IoPrivilegeLevel);
        Assert.Equal(1UL << 18, Rflags.AlignmentCheck);
        Assert.Equal(1UL << 21, Rflags.Id);
        Assert.Equal(0x240DD5UL, Rflags.Status | Rflags.Trap | Rflags.Direction | Rflags.AlignmentCheck | Rflags.Id);
    }

    [Fact]
    public void Page_entry_bits_match_the_manual()
    {
        Assert.Equal(0x1FFUL, (ulong)(PageFlags.Present | PageFlags.Writable | PageFlags.User | PageFlags.WriteThrough | PageFlags.CacheDisable
            | PageFlags.Accessed | PageFlags.Dirty | PageFlags.PageSize | PageFlags.Global));
        Assert.Equal(1UL << 63, (ulong)PageFlags.NoExecute);
        Assert.Equal(0x000F_FFFF_FFFF_F000UL, PageTable.AddressMask);
    }

    [Theory]
    [InlineData(8)]
    [InlineData(10)]
    [InlineData(11)]
    [InlineData(12)]
    [InlineData(13)]
    [InlineData(14)]
    [InlineData(17)]
    [InlineData(21)]
    [InlineData(29)]
    [InlineData(30)]
    public void Vectors_that_push_an_error_code_say_so(int vector) => Assert.True(ExceptionVector.HasErrorCode(vector));

    [Fact]
    public void Other_vectors_push_no_error_code()
    {
        int[] with = [8, 10, 11, 12, 13, 14, 17, 21, 29, 30];
        for (int v = -1; v < 256; v++)
        {
            Assert.Equal(with.Contains(v), ExceptionVector.HasErrorCode(v));
        }
    }

    [Theory]
    [InlineData(ExceptionVector.PageFault, "#PF")]
    [InlineData(ExceptionVector.GeneralProtection, "#GP")]
    [InlineData(ExceptionVector.InvalidOpcode, "#UD")]
    [InlineData(ExceptionVector.NonMaskableInterrupt, "NMI")]
    [InlineData(15, "#15")]
    [InlineData(32, "#32")]
    [InlineData(-1, "#-1")]
    public void Vector_mnemonics_are_the_manuals_names(int vector, string mnemonic) => Assert.Equal(mnemonic, ExceptionVector.Mnemonic(vector));

    [Theory]
    [InlineData(0x0000_7FFF_FFFF_FFFFUL, 48, true)]
    [InlineData(0x0000_8000_0000_0000UL, 48, false)]
    [InlineData(0xFFFF_8000_0000_0000UL, 48, true)]
    [InlineData(0xFFFF_7FFF_FFFF_FFFFUL, 48, false)]
    [InlineData(0x0000_8000_0000_0000UL, 57, true)]
    [InlineData(0x00FF_FFFF_FFFF_FFFFUL, 57, true)]
    [InlineData(0x0100_0000_0000_0000UL, 57, false)]
    [InlineData(0xFF00_0000_0000_0000UL, 57, true)]
    public void Canonical_addresses_repeat_the_top_implemented_bit(ulong address, int width, bool canonical) =>
        Assert.Equal(canonical, LinearAddress.IsCanonical(address, width));

    [Fact]
    public void Lower_half_is_below_bit_47()
    {
        Assert.True(LinearAddress.IsLowerHalf(0x7FFF_FFFF_FFFF));
        Assert.False(LinearAddress.IsLowerHalf(0x8000_0000_0000));
        Assert.False(LinearAddress.IsLowerHalf(0xFFFF_FFFF_8000_0000));
    }

    [Fact]
    public void Table_indices_take_nine_bits_per_level()
    {
        const ulong va = 0x0000_7F12_3456_7000;
        Assert.Equal((int)((va >> 39) & 511), PageTable.Index(va, 4));
        Assert.Equal((int)((va >> 30) & 511), PageTable.Index(va, 3));
        Assert.Equal((int)((va >> 21) & 511), PageTable.Index(va, 2));
        Assert.Equal((int)((va >> 12) & 511), PageTable.Index(va, 1));
        Assert.Equal(1UL << 30, PageTable.EntryCoverage(3));
        Assert.Throws<ArgumentOutOfRangeException>(() => PageTable.Index(va, 6));
    }
}
