using System.Buffers.Binary;
using Iced.Intel;
using Virt.Boot;
using Virt.Cpu.Interpreter.Tests.Differential;
using Virt.Memory;
using Virt.Testing;
using static Iced.Intel.AssemblerRegisters;

namespace Virt.Cpu.Interpreter.Tests.Avx;

/// <summary>
/// AVX2's own instructions (broadcasts, 128-bit inserts, extracts and permutes, cross-lane permutes, VPBLENDD, variable
/// shifts, masked moves, 256-bit sign and zero extension, gathers) at CPL 3 with AVX enabled: each snippet must leave
/// the same registers (YMM included), memory and exception on the interpreter (and its JIT tier) as on KVM, whose CPL 3
/// code runs on the host processor. A few facts are also checked on the interpreter alone.
/// </summary>
public sealed class Avx2Tests
{
    /// <summary>The snippets compared with KVM, by name.</summary>
    private static readonly Dictionary<string, Action<Assembler>> Snippets = BuildSnippets();

    /// <summary>Each snippet on the interpreter and on its JIT tier, with three register and memory states.</summary>
    public static TheoryData<string, string, int> Cases()
    {
        var d = new TheoryData<string, string, int>();
        foreach (var backend in new[] { "interpreter", "jit" })
        {
            foreach (var name in Snippets.Keys)
            {
                for (int seed = 0; seed < 3; seed++)
                {
                    d.Add(backend, name, seed);
                }
            }
        }

        return d;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void Matches_kvm(string backend, string snippet, int seed)
    {
        HostRequirements.RequireKvm();
        var emit = Snippets[snippet];
        seed += snippet.Aggregate(17, (h, c) => (h * 31) + c);
        var expected = Avx2Vm.Run("kvm", emit, seed);
        var actual = Avx2Vm.Run(backend, emit, seed);
        Avx2Vm.AssertSame(expected, actual, snippet);
    }

    [Fact]
    public void Gather_fault_keeps_the_loaded_elements_and_clears_their_mask_bits()
    {
        // Element 5 points at the unmapped page: elements 0-4 are loaded, 5-7 stay selected, then the #PF.
        var r = Avx2Vm.Run("interpreter", GatherFault(5), seed: 3);
        Assert.Equal(14, r.Result.Vector);
        Assert.Equal(DiffVm.ScratchAddress + 0x3000, r.Result.Cr2);
        for (int i = 0; i < 8; i++)
        {
            uint mask = BinaryPrimitives.ReadUInt32LittleEndian(r.Ymm.AsSpan((2 * 32) + (4 * i)));
            uint data = BinaryPrimitives.ReadUInt32LittleEndian(r.Ymm.AsSpan((1 * 32) + (4 * i)));
            Assert.Equal(i < 5 ? 0u : uint.MaxValue, mask);
            if (i < 5)
            {
                Assert.Equal(BinaryPrimitives.ReadUInt32LittleEndian(r.Result.Scratch.AsSpan(0x1000 + (4 * i))), data);
            }
        }
    }

    [Fact]
    public void Gather_with_an_address_size_prefix_and_no_base_wraps_at_32_bits()
    {
        var r = Avx2Vm.Run("interpreter", Snippets["vgather_address_size_prefix_without_base"], seed: 7);
        Assert.Equal(-2, r.Result.Vector);
        Assert.Equal(BinaryPrimitives.ReadUInt32LittleEndian(r.Result.Scratch.AsSpan(0x1000)), BinaryPrimitives.ReadUInt32LittleEndian(r.Ymm.AsSpan(32 + 12)));
    }

    [Fact]
    public void Gather_with_the_destination_as_its_mask_is_undefined()
    {
        var r = Avx2Vm.Run("interpreter", a => a.vpgatherdd(ymm1, __[rsi + (ymm8 * 4)], ymm1), seed: 4);
        Assert.Equal(6, r.Result.Vector);
    }

    [Fact]
    public void Variable_shifts_give_zero_or_the_sign_for_counts_beyond_the_width()
    {
        var r = Avx2Vm.Run("interpreter", a =>
        {
            a.mov(eax, 0x80000010);
            a.vmovd(xmm1, eax);
            a.vpbroadcastd(ymm1, xmm1);
            a.mov(eax, 33);
            a.vmovd(xmm2, eax);
            a.vpsllvd(ymm3, ymm1, ymm2); // element 0 by 33, the others by 0
            a.vpsravd(ymm4, ymm1, ymm2);
            a.vpsrlvd(xmm5, xmm1, xmm2);
        }, seed: 5);
        uint E(int reg, int i) => BinaryPrimitives.ReadUInt32LittleEndian(r.Ymm.AsSpan((reg * 32) + (4 * i)));
        Assert.Equal(0u, E(3, 0));
        Assert.Equal(0x80000010u, E(3, 7));
        Assert.Equal(uint.MaxValue, E(4, 0));
        Assert.Equal(0u, E(5, 0));
        Assert.Equal(0x80000010u, E(5, 3));
        Assert.Equal(0u, E(5, 4)); // VEX.128: bits 255:128 cleared
    }

    /// <summary>
    /// In 32-bit compatibility mode, gathers with a base register and with a displacement alone. KVM is no reference
    /// there (on the CI machine it raises #UD for any SSE or AVX instruction in compatibility mode), so the elements
    /// are checked against the scratch memory.
    /// </summary>
    [Theory]
    [InlineData("interpreter")]
    [InlineData("jit")]
    public void Gathers_in_compatibility_mode_address_with_32_bits(string backend)
    {
        int[] idx = [0, 4, -8, 0x100, 12, -0x204, 7, 0x1FC];
        var r = Avx2Vm.Run(backend, a =>
        {
            for (int i = 0; i < 8; i++)
            {
                a.mov(__dword_ptr[ebx + 0x1920 + (4 * i)], idx[i]);
            }

            a.vmovdqu(ymm2, __ymmword_ptr[ebx + 0x1920]);
            a.vpcmpeqd(ymm4, ymm4, ymm4);
            a.vpgatherdd(ymm1, __[esi + (ymm2 * 2) + 8], ymm4);
            a.vpcmpeqd(ymm4, ymm4, ymm4);
            a.vpgatherdq(ymm5, __[(xmm2 * 4) + (int)(DiffVm.ScratchAddress + 0x1000)], ymm4);
        }, seed: 6, compatibility: true);
        Assert.Equal(-2, r.Result.Vector);
        var mem = r.Result.Scratch;
        for (int i = 0; i < 8; i++)
        {
            Assert.Equal(BinaryPrimitives.ReadUInt32LittleEndian(mem.AsSpan(0x1000 + (idx[i] * 2) + 8)), BinaryPrimitives.ReadUInt32LittleEndian(r.Ymm.AsSpan(32 + (4 * i))));
        }

        for (int i = 0; i < 4; i++)
        {
            Assert.Equal(BinaryPrimitives.ReadUInt64LittleEndian(mem.AsSpan(0x1000 + (idx[i] * 4))), BinaryPrimitives.ReadUInt64LittleEndian(r.Ymm.AsSpan((5 * 32) + (8 * i))));
        }

        Assert.True(r.Ymm.AsSpan(4 * 32, 32).IndexOfAnyExcept((byte)0) < 0, "the mask is zero");
    }

    /// <summary>A VPGATHERDD of eight elements from RSI + index * 4, all selected, whose element <paramref name="bad"/> lands on the unmapped page.</summary>
    private static Action<Assembler> GatherFault(int bad) => a =>
    {
        // Indices 0..7, then index <paramref name="bad"/> made to reach ScratchAddress + 0x3000.
        for (int i = 0; i < 8; i++)
        {
            a.mov(eax, i == bad ? 0x2000 / 4 : i);
            a.vpinsrd(xmm3, xmm3, eax, (sbyte)(i & 3));
            if (i == 3)
            {
                a.vmovdqa(xmm4, xmm3);
            }
        }

        a.vinserti128(ymm8, ymm4, xmm3, 1);
        a.vpcmpeqd(ymm2, ymm2, ymm2);
        a.vpgatherdd(ymm1, __[rsi + (ymm8 * 4)], ymm2);
    };

    private static Dictionary<string, Action<Assembler>> BuildSnippets()
    {
        var s = new Dictionary<string, Action<Assembler>>
        {
            ["vpbroadcastb"] = a =>
            {
                a.vpbroadcastb(ymm1, xmm2);
                a.vpbroadcastb(xmm3, xmm4);
                a.vpbroadcastb(ymm5, __byte_ptr[rbx + 3]);
                a.vpbroadcastb(xmm6, __byte_ptr[rbx + 0xFFF]);
            },
            ["vpbroadcastw"] = a =>
            {
                a.vpbroadcastw(ymm1, xmm2);
                a.vpbroadcastw(xmm3, xmm4);
                a.vpbroadcastw(ymm5, __word_ptr[rbx + 3]);
                a.vpbroadcastw(xmm6, __word_ptr[rbx + 0xFFF]);
            },
            ["vpbroadcastd"] = a =>
            {
                a.vpbroadcastd(ymm1, xmm2);
                a.vpbroadcastd(xmm3, xmm4);
                a.vpbroadcastd(ymm5, __dword_ptr[rbx + 3]);
                a.vpbroadcastd(xmm6, __dword_ptr[rbx + 0xFFE]);
            },
            ["vpbroadcastq"] = a =>
            {
                a.vpbroadcastq(ymm1, xmm2);
                a.vpbroadcastq(xmm3, xmm4);
                a.vpbroadcastq(ymm5, __qword_ptr[rbx + 3]);
                a.vpbroadcastq(xmm6, __qword_ptr[rbx + 0xFFC]);
            },
            ["vbroadcasti128"] = a =>
            {
                a.vbroadcasti128(ymm1, __xmmword_ptr[rbx + 0x13]);
                a.vbroadcasti128(ymm2, __xmmword_ptr[rbx + 0x1FF8]);
            },
            ["vinserti128"] = a =>
            {
                a.vinserti128(ymm1, ymm2, xmm3, 1);
                a.vinserti128(ymm4, ymm5, xmm6, 0);
                a.vinserti128(ymm7, ymm7, __xmmword_ptr[rbx + 0x21], 1);
                a.vinserti128(ymm9, ymm10, __xmmword_ptr[rbx + 0x41], 2);
            },
            ["vextracti128"] = a =>
            {
                a.vextracti128(xmm1, ymm2, 1);
                a.vextracti128(xmm3, ymm4, 0);
                a.vextracti128(__xmmword_ptr[rbx + 0x31], ymm5, 1);
                a.vextracti128(__xmmword_ptr[rbx + 0x1FF9], ymm6, 0);
            },
            ["vperm2i128"] = a =>
            {
                a.vperm2i128(ymm1, ymm2, ymm3, 0x31);
                a.vperm2i128(ymm4, ymm5, ymm6, 0x8A);
                a.vperm2i128(ymm7, ymm7, __ymmword_ptr[rbx + 0x45], 0x02);
                a.vperm2i128(ymm9, ymm10, ymm11, 0x3C);
            },
            ["vpermq"] = a =>
            {
                a.vpermq(ymm1, ymm2, 0x1B);
                a.vpermq(ymm3, ymm3, 0xE4);
                a.vpermq(ymm4, __ymmword_ptr[rbx + 0x51], 0x4E);
                a.vpermpd(ymm5, ymm6, 0x93);
                a.vpermpd(ymm7, __ymmword_ptr[rbx + 0x1FF0], 0x07);
            },
            ["vpermd"] = a =>
            {
                a.vpermd(ymm1, ymm11, ymm2);
                a.vpermd(ymm3, ymm4, ymm5);
                a.vpermd(ymm6, ymm11, __ymmword_ptr[rbx + 0x63]);
                a.vpermps(ymm7, ymm11, ymm9);
                a.vpermps(ymm10, ymm12, __ymmword_ptr[rbx + 0x1FF0]);
            },
            ["vpblendd"] = a =>
            {
                a.vpblendd(xmm1, xmm2, xmm3, 0x5A);
                a.vpblendd(ymm4, ymm5, ymm6, 0xA5);
                a.vpblendd(xmm7, xmm9, __xmmword_ptr[rbx + 0x17], 0xF3);
                a.vpblendd(ymm10, ymm12, __ymmword_ptr[rbx + 0x27], 0x3C);
            },
            ["vpsllv"] = a =>
            {
                a.vpsllvd(ymm1, ymm2, ymm11);
                a.vpsllvd(xmm3, xmm4, xmm11);
                a.vpsllvq(ymm5, ymm6, ymm11);
                a.vpsllvq(xmm7, xmm9, __xmmword_ptr[rbx + 0x1800]);
                a.vpsllvd(ymm10, ymm12, __ymmword_ptr[rbx + 0x1800]);
            },
            ["vpsrlv"] = a =>
            {
                a.vpsrlvd(ymm1, ymm2, ymm11);
                a.vpsrlvd(xmm3, xmm4, xmm11);
                a.vpsrlvq(ymm5, ymm6, ymm11);
                a.vpsrlvq(xmm7, xmm9, __xmmword_ptr[rbx + 0x1800]);
                a.vpsrlvd(ymm10, ymm12, __ymmword_ptr[rbx + 0x1800]);
            },
            ["vpsrav"] = a =>
            {
                a.vpsravd(ymm1, ymm2, ymm11);
                a.vpsravd(xmm3, xmm4, xmm11);
                a.vpsravd(ymm5, ymm6, __ymmword_ptr[rbx + 0x1800]);
                a.vpsravd(xmm7, xmm9, __xmmword_ptr[rbx + 0x1800]);
            },
            ["vpmaskmov_load"] = a =>
            {
                a.vpmaskmovd(ymm1, ymm10, __ymmword_ptr[rbx + 0x101]);
                a.vpmaskmovd(xmm2, xmm10, __xmmword_ptr[rbx + 0x131]);
                a.vpmaskmovq(ymm3, ymm10, __ymmword_ptr[rbx + 0x151]);
                a.vpmaskmovq(xmm4, xmm10, __xmmword_ptr[rbx + 0x171]);
            },
            ["vpmaskmov_store"] = a =>
            {
                a.vpmaskmovd(__ymmword_ptr[rbx + 0x101], ymm10, ymm1);
                a.vpmaskmovd(__xmmword_ptr[rbx + 0x131], ymm10, ymm2);
                a.vpmaskmovq(__ymmword_ptr[rbx + 0x151], ymm10, ymm3);
                a.vpmaskmovq(__xmmword_ptr[rbx + 0x171], xmm10, xmm4);
            },
            ["vpmaskmov_unselected_elements_do_not_fault"] = a =>
            {
                // Only the low four dwords selected; the upper half lies on the read-only page, then on the unmapped one.
                a.vpcmpeqd(xmm12, xmm12, xmm12);
                a.vpmaskmovd(__ymmword_ptr[rbx + 0x1FF0], ymm12, ymm1);
                a.vpmaskmovd(ymm2, ymm12, __ymmword_ptr[rbx + 0x2FF0]);
                a.vpmaskmovq(__ymmword_ptr[rbx + 0x1FF0], ymm12, ymm3);
            },
            ["vpmaskmov_store_to_read_only_faults_before_writing"] = a =>
            {
                a.vpcmpeqd(ymm12, ymm12, ymm12);
                a.vpmaskmovd(__ymmword_ptr[rbx + 0x1FF0], ymm12, ymm1);
            },
            ["vpmaskmov_load_from_unmapped_faults"] = a =>
            {
                a.vpcmpeqd(ymm12, ymm12, ymm12);
                a.vpmaskmovq(ymm2, ymm12, __ymmword_ptr[rbx + 0x2FF0]);
            },
            ["vpmovsx_ymm"] = a =>
            {
                a.vpmovsxbw(ymm1, xmm2);
                a.vpmovsxbd(ymm3, xmm4);
                a.vpmovsxbq(ymm5, xmm6);
                a.vpmovsxwd(ymm7, __xmmword_ptr[rbx + 0x11]);
                a.vpmovsxwq(ymm9, __qword_ptr[rbx + 0x23]);
                a.vpmovsxdq(ymm10, xmm11);
                a.vpmovsxbd(ymm12, __qword_ptr[rbx + 0x35]);
                a.vpmovsxbq(ymm13, __dword_ptr[rbx + 0x47]);
                a.vpmovsxbw(xmm14, xmm2);
            },
            ["vpmovzx_ymm"] = a =>
            {
                a.vpmovzxbw(ymm1, xmm2);
                a.vpmovzxbd(ymm3, xmm4);
                a.vpmovzxbq(ymm5, xmm6);
                a.vpmovzxwd(ymm7, __xmmword_ptr[rbx + 0x11]);
                a.vpmovzxwq(ymm9, __qword_ptr[rbx + 0x23]);
                a.vpmovzxdq(ymm10, __xmmword_ptr[rbx + 0x1FF8]);
                a.vpmovzxbd(ymm12, __qword_ptr[rbx + 0x35]);
                a.vpmovzxbq(ymm13, __dword_ptr[rbx + 0x47]);
                a.vpmovzxdq(xmm14, xmm2);
            },
            ["vgather_dword_indices"] = a =>
            {
                a.vgatherdps(ymm1, __[rsi + (ymm8 * 4) + 8], ymm10);
                a.vmovdqa(ymm12, ymm13);
                a.vgatherdps(xmm2, __[rsi + (xmm8 * 1) - 0x40], xmm12);
                a.vmovdqa(ymm10, ymm13);
                a.vgatherdpd(ymm3, __[rsi + (xmm8 * 8)], ymm10);
                a.vmovdqa(ymm10, ymm13);
                a.vgatherdpd(xmm4, __[rsi + (xmm8 * 2) + 3], xmm10);
            },
            ["vgather_qword_indices"] = a =>
            {
                a.vgatherqps(xmm1, __[rsi + (ymm9 * 4)], xmm10);
                a.vmovdqa(ymm10, ymm13);
                a.vgatherqps(xmm2, __[rsi + (xmm9 * 8) + 0x10], xmm10);
                a.vmovdqa(ymm10, ymm13);
                a.vgatherqpd(ymm3, __[rsi + (ymm9 * 8)], ymm10);
                a.vmovdqa(ymm10, ymm13);
                a.vgatherqpd(xmm4, __[rsi + (xmm9 * 1) + 1], xmm10);
            },
            ["vpgather_dword_indices"] = a =>
            {
                a.vpgatherdd(ymm1, __[rsi + (ymm8 * 4) + 8], ymm10);
                a.vmovdqa(ymm12, ymm13);
                a.vpgatherdd(xmm2, __[rsi + (xmm8 * 1) - 0x40], xmm12);
                a.vmovdqa(ymm10, ymm13);
                a.vpgatherdq(ymm3, __[rsi + (xmm8 * 8)], ymm10);
                a.vmovdqa(ymm10, ymm13);
                a.vpgatherdq(xmm4, __[rsi + (xmm8 * 2) + 3], xmm10);
            },
            ["vpgather_qword_indices"] = a =>
            {
                a.vpgatherqd(xmm1, __[rsi + (ymm9 * 4)], xmm10);
                a.vmovdqa(ymm10, ymm13);
                a.vpgatherqd(xmm2, __[rsi + (xmm9 * 8) + 0x10], xmm10);
                a.vmovdqa(ymm10, ymm13);
                a.vpgatherqq(ymm3, __[rsi + (ymm9 * 8)], ymm10);
                a.vmovdqa(ymm10, ymm13);
                a.vpgatherqq(xmm4, __[rsi + (xmm9 * 1) + 1], xmm10);
            },
            ["vgather_addressing"] = a =>
            {
                // 32-bit addressing (address-size prefix), no base register, a segment base.
                a.vpgatherdd(ymm1, __[esi + (ymm8 * 2)], ymm10);
                a.vmovdqa(ymm10, ymm13);
                a.vpgatherdq(ymm2, __[(xmm8 * 4) + (int)(DiffVm.ScratchAddress + 0x1000)], ymm10);
                a.vmovdqa(ymm10, ymm13);
                a.vpgatherqq(ymm3, __qword_ptr.fs[rsi + (ymm9 * 1) + 0x20], ymm10);
                a.vmovdqa(ymm10, ymm13);
                a.vgatherqps(xmm4, __dword_ptr.gs[rsi + (ymm9 * 2) - 0x800], xmm10);
            },
            ["vgather_address_size_prefix_without_base"] = a =>
            {
                // vpgatherdd xmm1, [xmm8 + 0x80041000], xmm10 with an address-size prefix: the sum wraps at 32 bits to
                // the scratch page (with 64-bit addressing it would be 0xFFFFFFFF00041000, unmapped).
                a.mov(eax, unchecked((int)0x80000000));
                a.vmovd(xmm8, eax);
                a.vpbroadcastd(xmm8, xmm8);
                a.vpcmpeqd(xmm10, xmm10, xmm10);
                a.db(0x67, 0xC4, 0xA2, 0x29, 0x90, 0x0C, 0x05, 0x00, 0x10, 0x04, 0x80);
            },
            ["vgather_all_masked_off"] = a =>
            {
                // Nothing selected: nothing is read (the indices reach the unmapped page), the destination's upper bits are cleared.
                a.vpxor(xmm10, xmm10, xmm10);
                a.vpgatherdd(ymm1, __[rsi + (ymm8 * 8) + 0x5000], ymm10);
                a.vpgatherqd(xmm2, __[rsi + (xmm9 * 8) + 0x5000], xmm10);
                a.vgatherdpd(xmm3, __[rsi + (xmm8 * 8) + 0x5000], xmm10);
            },
            ["vgather_same_registers_undefined"] = a => a.vpgatherdd(ymm1, __[rsi + (ymm1 * 4)], ymm2),
            ["vgather_destination_as_mask_undefined"] = a => a.vgatherdpd(ymm1, __[rsi + (xmm8 * 4)], ymm1),
            ["vgather_index_as_mask_undefined"] = a => a.vpgatherqd(xmm1, __[rsi + (xmm9 * 4)], xmm9),
            ["vgather_fault_first"] = GatherFault(0),
            ["vgather_fault_middle"] = GatherFault(5),
            ["vgather_fault_last"] = GatherFault(7),
            ["vgather_fault_qword"] = a =>
            {
                a.mov(eax, 0x2000);
                a.vmovq(xmm3, rax);
                a.mov(eax, 0x18);
                a.vmovq(xmm4, rax);
                a.vpunpcklqdq(xmm3, xmm4, xmm3); // element 0: 0x18, element 1: 0x2000 (the unmapped page)
                a.vinserti128(ymm9, ymm3, xmm4, 1);
                a.vpcmpeqd(ymm10, ymm10, ymm10);
                a.vpgatherqq(ymm1, __[rsi + (ymm9 * 1)], ymm10);
            },
            ["vgather_fault_xmm_form"] = a =>
            {
                a.mov(eax, 0x2000);
                a.vmovd(xmm3, eax);
                a.vpshufd(xmm3, xmm3, 0x4E); // index 2 reaches the unmapped page
                a.vpcmpeqd(xmm10, xmm10, xmm10);
                a.vpgatherdd(xmm1, __[rsi + (xmm3 * 1)], xmm10);
            },
            ["vgather_fault_mask_values"] = a =>
            {
                // Mask elements with and without the top bit and other bits set; element 3 faults.
                uint[] mask = [0x7FFFFFFF, 0x80000001, 0x12345678, 0x80000000, 0x7FFFFFFF, 0xC0000000, 0x00000001, 0xFFFFFFFF];
                for (int i = 0; i < 8; i++)
                {
                    a.mov(__dword_ptr[rbx + 0x1900 + (4 * i)], unchecked((int)mask[i]));
                    a.mov(__dword_ptr[rbx + 0x1920 + (4 * i)], i == 3 ? 0x2000 : 4 * i);
                }

                a.vmovdqu(ymm10, __ymmword_ptr[rbx + 0x1900]);
                a.vmovdqu(ymm8, __ymmword_ptr[rbx + 0x1920]);
                a.vpgatherdd(ymm1, __[rsi + ymm8], ymm10);
            },
            ["vgather_fault_xmm_form_ymm_mask"] = a =>
            {
                // A VEX.128 gather that faults: the upper halves of the destination and of an all-ones mask.
                a.mov(eax, 0x2000);
                a.vmovd(xmm3, eax);
                a.vpshufd(xmm3, xmm3, 0x4E);
                a.vpcmpeqd(ymm10, ymm10, ymm10);
                a.vpgatherdd(xmm1, __[rsi + (xmm3 * 1)], xmm10);
            },
            ["vgather_fault_qd_xmm_form"] = a =>
            {
                // Two dword elements from qword indices: bits 127:64 of the destination and mask after the fault.
                a.mov(eax, 0x2000);
                a.vmovq(xmm3, rax);
                a.vpslldq(xmm3, xmm3, 8);
                a.vpcmpeqd(ymm10, ymm10, ymm10);
                a.vpgatherqd(xmm1, __[rsi + (xmm3 * 1)], xmm10);
            },
            ["vgather_qd_xmm_form_complete"] = a =>
            {
                a.vpcmpeqd(ymm10, ymm10, ymm10);
                a.vpgatherqd(xmm1, __[rsi + (xmm9 * 1)], xmm10);
                a.vpcmpeqd(ymm12, ymm12, ymm12);
                a.vgatherdpd(xmm2, __[rsi + (xmm8 * 1)], xmm12);
            },
            ["vgather_fault_partial_mask"] = a =>
            {
                // The mask's selected elements are not all ones: what is left after the fault.
                a.mov(eax, 0x2000 / 4);
                a.vmovd(xmm3, eax);
                a.vpslldq(xmm3, xmm3, 12);
                a.vinserti128(ymm8, ymm3, xmm3, 1);
                a.vpgatherdd(ymm1, __[rsi + (ymm8 * 4)], ymm10);
            },
        };
        return s;
    }
}

/// <summary>Runs one CPL 3 snippet with AVX enabled (CR4.OSXSAVE, XCR0 = 7) and a seeded register and memory state, and returns everything it left.</summary>
internal static class Avx2Vm
{
    /// <summary>What a run left: the sequence result and the sixteen YMM registers, 32 bytes each.</summary>
    public sealed record Outcome(SequenceResult Result, byte[] Ymm);

    /// <summary>
    /// Runs <paramref name="emit"/> on <paramref name="backend"/>. YMM0-YMM15 and the scratch pages are random from
    /// <paramref name="seed"/>, except: YMM8 holds dword indices and YMM9 qword indices in [-0x200, 0x200), YMM10 a mask
    /// (YMM13 a copy of it) with random top bits, YMM11 and the 32 bytes at scratch + 0x1800 shift counts up to 70. RBX is
    /// the scratch base, RSI the scratch base + 0x1000.
    /// </summary>
    public static Outcome Run(string backend, Action<Assembler> emit, int seed, bool compatibility = false)
    {
        var rng = new Random(seed);
        var ymm = new byte[16 * 32];
        rng.NextBytes(ymm);
        for (int i = 0; i < 8; i++)
        {
            int v = rng.Next(-0x200, 0x200);
            BinaryPrimitives.WriteInt32LittleEndian(ymm.AsSpan((8 * 32) + (4 * i)), v);
        }

        for (int i = 0; i < 4; i++)
        {
            BinaryPrimitives.WriteInt64LittleEndian(ymm.AsSpan((9 * 32) + (8 * i)), rng.Next(-0x200, 0x200));
        }

        for (int i = 0; i < 32; i++)
        {
            ymm[(10 * 32) + i] = (byte)((ymm[(10 * 32) + i] & 0x7F) | (rng.Next(2) << 7));
        }

        ymm.AsSpan(10 * 32, 32).CopyTo(ymm.AsSpan(13 * 32));
        var scratch = new byte[DiffVm.ScratchSize];
        rng.NextBytes(scratch);
        for (int i = 0; i < 8; i++)
        {
            uint count = (uint)rng.Next(0, 71);
            BinaryPrimitives.WriteUInt32LittleEndian(ymm.AsSpan((11 * 32) + (4 * i)), count);
            BinaryPrimitives.WriteUInt32LittleEndian(scratch.AsSpan(0x1800 + (4 * i)), (uint)rng.Next(0, 71));
        }

        using var vm = new DiffVm(TestBackends.Create(backend), compatibility);
        var code = GuestProgram.Assemble(compatibility ? 32 : 64, DiffVm.CodeAddress, a =>
        {
            emit(a);
            a.hlt();
        });
        var regs = new GeneralRegisters
        {
            Rip = DiffVm.CodeAddress,
            Rsp = DiffVm.ScratchAddress + 0x1000,
            Rflags = 0x202,
            Rbx = DiffVm.ScratchAddress,
            Rsi = DiffVm.ScratchAddress + 0x1000,
        };
        var r = RunWithAvx(vm, code, DiffVm.CodeAddress + (ulong)code.Length - 1, regs, scratch, ymm, compatibility);
        return new Outcome(r, ReadYmm(vm.Vcpu.GetXsaveState()));
    }

    public static void AssertSame(Outcome expected, Outcome actual, string snippet)
    {
        var e = expected.Result;
        var a = actual.Result;
        string what = $"{snippet}: exit {e.Exit}/{a.Exit}, vector {e.Vector}/{a.Vector} rip {e.Rip:x}/{a.Rip:x}";
        Assert.True(e.Exit == a.Exit && e.Vector == a.Vector, what);
        Assert.True(e.Vector != -1, $"{snippet}: the reference run did not end at a handler ({e.Exit})");
        Assert.Equal(e.ErrorCode, a.ErrorCode);
        Assert.Equal(e.Rip, a.Rip);
        Assert.Equal(e.Cr2, a.Cr2);
        Assert.Equal(e.Gprs, a.Gprs);
        for (int i = 0; i < 16; i++)
        {
            Assert.True(
                expected.Ymm.AsSpan(i * 32, 32).SequenceEqual(actual.Ymm.AsSpan(i * 32, 32)),
                $"{snippet}: YMM{i} expected {Hex(expected.Ymm, i)} but was {Hex(actual.Ymm, i)}");
        }

        int diff = e.Scratch.AsSpan().CommonPrefixLength(a.Scratch);
        Assert.True(diff == e.Scratch.Length, $"{snippet}: scratch differs from byte 0x{diff:x}");
    }

    private static string Hex(byte[] ymm, int reg)
    {
        var q = new string[4];
        for (int k = 0; k < 4; k++)
        {
            q[3 - k] = BinaryPrimitives.ReadUInt64LittleEndian(ymm.AsSpan((reg * 32) + (8 * k))).ToString("x16");
        }

        return string.Join('_', q);
    }

    /// <summary>Like <see cref="DiffVm.Run"/>, with CR4.OSXSAVE set and the XSAVE state (XCR0 = 7, the given YMM registers) loaded before the run.</summary>
    private static SequenceResult RunWithAvx(DiffVm vm, byte[] code, ulong endRip, in GeneralRegisters regs, byte[] scratch, byte[] ymm, bool compatibility)
    {
        var user = UserSregs(vm, compatibility);
        user.Cr4 |= 1UL << 18;
        vm.Memory.Write(new GuestAddress(DiffVm.CodeAddress), code);
        vm.Memory.Write(new GuestAddress(DiffVm.ScratchAddress), scratch);
        vm.Vcpu.SetSpecialRegisters(user);
        vm.Vcpu.SetGeneralRegisters(regs);
        vm.Vcpu.SetXsaveState(new XsaveState(7, XsaveImage(ymm)));
        return Finish(vm, endRip);
    }

    /// <summary>The user-mode special registers of <paramref name="vm"/>, rebuilt as DiffVm builds them.</summary>
    private static SpecialRegisters UserSregs(DiffVm vm, bool compatibility)
    {
        var s = ProcessorSetup.Prepare(vm.Memory, vm.Vcpu.GetSpecialRegisters(), StartMode.Long64, new ProcessorSetupOptions { KernelStack = DiffVm.KernelStackTop });
        s.Cr3 = DiffVm.PageTables;
        s.Idt = new DescriptorTable { Base = DiffVm.IdtAddress, Limit = (32 * 16) - 1 };
        s.Cs = ProcessorSetup.UserSegment(code: true, longMode: !compatibility);
        s.Ss = s.Ds = s.Es = ProcessorSetup.UserSegment(code: false);
        s.Fs = ProcessorSetup.UserSegment(code: false);
        s.Fs.Base = DiffVm.FsBase;
        s.Gs = ProcessorSetup.UserSegment(code: false);
        s.Gs.Base = DiffVm.GsBase;
        return s;
    }

    /// <summary>Runs the vCPU to its halt and reads the outcome as <see cref="DiffVm.Run"/> does.</summary>
    private static SequenceResult Finish(DiffVm vm, ulong endRip)
    {
        VcpuExit exit;
        int guard = 0;
        do
        {
            exit = vm.Vcpu.Run();
        }
        while (exit.Reason == VcpuExitReason.Interrupted && ++guard < 100);

        var r = vm.Vcpu.GetGeneralRegisters();
        var sregs = vm.Vcpu.GetSpecialRegisters();
        var outScratch = new byte[DiffVm.ScratchSize];
        vm.Memory.Read(new GuestAddress(DiffVm.ScratchAddress), outScratch);
        ulong[] gprs = [r.Rax, r.Rcx, r.Rdx, r.Rbx, 0, r.Rbp, r.Rsi, r.Rdi, r.R8, r.R9, r.R10, r.R11, r.R12, r.R13, r.R14, r.R15];
        if (exit.Reason != VcpuExitReason.Halt || r.Rip < DiffVm.HandlerAddress || r.Rip >= DiffVm.HandlerAddress + (32 * 16))
        {
            return new SequenceResult(exit.ToString(), -1, 0, r.Rip, r.Rflags, 0, gprs, outScratch);
        }

        int vector = (int)((r.Rip - DiffVm.HandlerAddress) / 16);
        bool hasError = vector is 8 or 10 or 11 or 12 or 13 or 14 or 17;
        ulong frame = r.Rsp;
        ulong error = hasError ? vm.Memory.Read<ulong>(new GuestAddress(frame)) : 0;
        if (hasError)
        {
            frame += 8;
        }

        ulong rip = vm.Memory.Read<ulong>(new GuestAddress(frame));
        ulong rflags = vm.Memory.Read<ulong>(new GuestAddress(frame + 16));
        gprs[4] = vm.Memory.Read<ulong>(new GuestAddress(frame + 24));
        if (vector == 13 && rip == endRip && error == 0)
        {
            vector = -2; // the closing HLT: a normal end
        }

        return new SequenceResult("halt", vector, error, rip, rflags, vector == 14 ? sregs.Cr2 : 0, gprs, outScratch);
    }

    /// <summary>A standard-format XSAVE image with the x87 in its initial state, MXCSR 0x1F80, and YMM0-YMM15 from <paramref name="ymm"/>.</summary>
    private static byte[] XsaveImage(byte[] ymm)
    {
        var area = new byte[XsaveState.MinimumSize + 256];
        BinaryPrimitives.WriteUInt16LittleEndian(area, 0x37F);
        BinaryPrimitives.WriteUInt32LittleEndian(area.AsSpan(24), 0x1F80);
        BinaryPrimitives.WriteUInt32LittleEndian(area.AsSpan(28), 0xFFFF);
        for (int i = 0; i < 16; i++)
        {
            ymm.AsSpan(i * 32, 16).CopyTo(area.AsSpan(160 + (16 * i)));
            ymm.AsSpan((i * 32) + 16, 16).CopyTo(area.AsSpan(XsaveState.MinimumSize + (16 * i)));
        }

        BinaryPrimitives.WriteUInt64LittleEndian(area.AsSpan(XsaveState.LegacyRegionSize), 7);
        return area;
    }

    /// <summary>YMM0-YMM15 from an XSAVE image (a component XSTATE_BV marks as initial reads as zero).</summary>
    private static byte[] ReadYmm(XsaveState x)
    {
        var ymm = new byte[16 * 32];
        var area = x.Area;
        var bv = x.StateComponents;
        for (int i = 0; i < 16; i++)
        {
            if ((bv & XsaveComponents.Sse) != 0)
            {
                area.Slice(160 + (16 * i), 16).CopyTo(ymm.AsSpan(i * 32));
            }

            if ((bv & XsaveComponents.Avx) != 0 && area.Length >= XsaveState.MinimumSize + 256)
            {
                area.Slice(XsaveState.MinimumSize + (16 * i), 16).CopyTo(ymm.AsSpan((i * 32) + 16));
            }
        }

        return ymm;
    }
}
