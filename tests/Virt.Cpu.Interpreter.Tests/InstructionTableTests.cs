using Iced.Intel;
using Virt.Cpu.Interpreter;

namespace Virt.Cpu.Interpreter.Tests;

public class InstructionTableTests
{
    [Fact]
    public void Every_row_binds_a_handler_or_runs_inline()
    {
        foreach (var (form, row) in InstructionTable.Rows)
        {
            Assert.True(row.Bind is not null || row.Inline != InlineOp.None, $"{form} has neither a handler nor an inline operation.");
        }
    }

    [Fact]
    public void Every_code_has_a_row()
    {
        foreach (var code in Enum.GetValues<Code>())
        {
            Assert.NotNull(InstructionTable.At(InstructionTable.IndexOf(code)));
        }
    }

    [Theory]
    [InlineData(Code.Movsd_m32_m32, "String")]
    [InlineData(Code.Movsd_xmm_xmmm64, "Sse")]
    [InlineData(Code.Cmpsd_m32_m32, "String")]
    [InlineData(Code.Cmpsd_xmm_xmmm64_imm8, "Sse")]
    [InlineData(Code.Fadd_m32fp, "X87")]
    [InlineData(Code.Mov_cr_r64, "System")]
    [InlineData(Code.Mov_Sreg_rm16, "Segmentation")]
    [InlineData(Code.Mov_r64_rm64, "DataTransfer")]
    [InlineData(Code.VEX_Vaddps_xmm_xmm_xmmm128, "Avx")]
    [InlineData(Code.VEX_Vfmadd231ps_ymm_ymm_ymmm256, "Avx")]
    [InlineData(Code.VEX_Vaesenc_xmm_xmm_xmmm128, "Invalid")]
    [InlineData(Code.Xsetbv, "System")]
    [InlineData(Code.Movbe_r64_m64, "DataTransfer")]
    [InlineData(Code.Paddb_mm_mmm64, "Mmx")]
    [InlineData(Code.Cvtpi2ps_xmm_mmm64, "Mmx")]
    [InlineData(Code.Emms, "Mmx")]
    [InlineData(Code.Pshufb_xmm_xmmm128, "Sse")]
    [InlineData(Code.VEX_Pdep_r64_r64_rm64, "Bit")]
    [InlineData(Code.Crc32_r32_rm8, "Bit")]
    public void A_form_belongs_to_its_isa_group(Code code, string group) =>
        Assert.Equal(group, InstructionTable.At(InstructionTable.IndexOf(code)).Group.ToString());

    [Theory]
    [InlineData(Code.Mov_cr_r64)]
    [InlineData(Code.Wrmsr)]
    [InlineData(Code.Hlt)]
    [InlineData(Code.Lgdt_m1664)]
    [InlineData(Code.Invlpg_m)]
    [InlineData(Code.Xsetbv)]
    public void Privileged_forms_end_their_block(Code code)
    {
        var row = InstructionTable.At(InstructionTable.IndexOf(code));
        Assert.True((row.Flags & FormFlags.Privileged) != 0);
        Assert.True(row.EndsBlock);
    }

    [Theory]
    [InlineData(Code.Add_rm32_r32, true)]
    [InlineData(Code.Xchg_rm64_r64, true)]
    [InlineData(Code.Cmpxchg16b_m128, true)]
    [InlineData(Code.Cmp_rm32_r32, false)]
    [InlineData(Code.Mov_rm64_r64, false)]
    public void Lockable_forms_are_the_read_modify_write_ones(Code code, bool lockable) =>
        Assert.Equal(lockable, (InstructionTable.At(InstructionTable.IndexOf(code)).Flags & FormFlags.Lockable) != 0);
}
