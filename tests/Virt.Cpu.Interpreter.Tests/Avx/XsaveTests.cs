using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace Virt.Cpu.Interpreter.Tests.Avx;

/// <summary>XSAVE, XRSTOR, XGETBV, XSETBV and CPUID leaf 0xD on the interpreter at CPL 0, against the SDM's rules.</summary>
public sealed class XsaveTests
{
    private const ulong Area = 0x100000;

    /// <summary>Runs <paramref name="body"/> at CPL 0 after setting CR4.OSXSAVE (unless <paramref name="osxsave"/> is false); the vector it ended with (-2: none).</summary>
    private static (Machine M, int Vector) Run(Action<Assembler> body, bool osxsave = true)
    {
        var m = Machine.Long64(a =>
        {
            if (osxsave)
            {
                a.mov(rax, cr4);
                a.or(rax, 1 << 18);
                a.mov(cr4, rax);
            }

            body(a);
            a.hlt();
        });
        m.InstallHaltingIdt();
        m.Run();
        return (m, m.HaltedVector);
    }

    private static void SetXcr0(Assembler a, int value)
    {
        a.xor(ecx, ecx);
        a.mov(eax, value);
        a.xor(edx, edx);
        a.xsetbv();
    }

    [Theory]
    [InlineData(0, 0, 13)] // x87 bit clear
    [InlineData(5, 0, 13)] // AVX without SSE
    [InlineData(0xF, 0, 13)] // a component the interpreter does not have
    [InlineData(3, 1, 13)] // XCR1 does not exist
    [InlineData(7, 0, -2)]
    [InlineData(3, 0, -2)]
    public void Xsetbv_takes_only_valid_xcr0_values(int value, int xcr, int vector)
    {
        var (m, v) = Run(a =>
        {
            a.mov(ecx, xcr);
            a.mov(eax, value);
            a.xor(edx, edx);
            a.xsetbv();
            a.xor(ecx, ecx);
            a.xgetbv();
            a.mov(ebx, eax);
        });
        using (m)
        {
            Assert.Equal(vector, v);
            if (vector == -2)
            {
                Assert.Equal((ulong)value, m.Regs.Rbx);
                Assert.Equal((ulong)value, m.Vcpu.GetXsaveState().Xcr0);
            }
        }
    }

    [Fact]
    public void Xgetbv_and_avx_are_undefined_until_the_os_sets_cr4_osxsave()
    {
        var (m, v) = Run(a => a.xgetbv(), osxsave: false);
        using (m)
        {
            Assert.Equal(6, v);
        }

        // With OSXSAVE but XCR0 still x87 only, AVX instructions are undefined.
        var (m2, v2) = Run(a => a.vpxor(ymm0, ymm0, ymm0));
        using (m2)
        {
            Assert.Equal(6, v2);
        }
    }

    [Fact]
    public void Cpuid_reports_osxsave_and_the_image_size_for_the_current_xcr0()
    {
        var (m, v) = Run(a =>
        {
            a.mov(eax, 0xD);
            a.xor(ecx, ecx);
            a.cpuid();
            a.mov(r8d, ebx); // size for XCR0 = x87 only
            a.mov(r9d, ecx); // size for everything supported
            SetXcr0(a, 7);
            a.mov(eax, 0xD);
            a.xor(ecx, ecx);
            a.cpuid();
            a.mov(r10d, ebx);
            a.mov(eax, 1);
            a.cpuid();
            a.mov(r11d, ecx);
            a.mov(eax, 0xD);
            a.mov(ecx, 2);
            a.cpuid();
            a.mov(r12d, eax);
            a.mov(r13d, ebx);
        });
        using (m)
        {
            Assert.Equal(-2, v);
            var r = m.Regs;
            Assert.Equal(576UL, r.R8);
            Assert.Equal(832UL, r.R9);
            Assert.Equal(832UL, r.R10);
            Assert.NotEqual(0UL, r.R11 & (1UL << 27)); // OSXSAVE
            Assert.Equal(256UL, r.R12);
            Assert.Equal(576UL, r.R13);
        }
    }

    [Fact]
    public void Xsave_writes_the_requested_components_and_xrstor_loads_or_initialises_them()
    {
        var (m, v) = Run(a =>
        {
            SetXcr0(a, 7);
            a.mov(rdi, Area);
            // Fill the area with a pattern first: XSAVE must leave bytes 416-511 and unrequested components alone.
            a.mov(ecx, 1024 / 8);
            a.mov(rax, 0x5A5A5A5A5A5A5A5AUL);
            a.rep.stosq();
            a.mov(rdi, Area + 512); // the header: zero (XRSTOR checks it)
            a.xor(eax, eax);
            a.mov(ecx, 8);
            a.rep.stosq();
            a.mov(eax, 0x3F800000);
            a.vmovd(xmm1, eax);
            a.vbroadcastss(ymm1, xmm1); // ymm1: eight 1.0f
            a.mov(rdi, Area);
            a.xor(edx, edx);
            a.mov(eax, 6); // SSE and AVX, not x87
            a.xsave(__[rdi]);
            a.mov(rbx, __qword_ptr[rdi + 512]); // XSTATE_BV
            a.vzeroall();
            a.mov(eax, 7);
            a.xrstor(__[rdi]);
            a.vextractf128(xmm2, ymm1, 1);
            a.vmovd(r8d, xmm2); // upper half restored
            // XSTATE_BV with the AVX bit clear: XRSTOR puts the AVX component in its initial state (zero).
            a.and(__qword_ptr[rdi + 512], ~4);
            a.mov(eax, 7);
            a.xrstor(__[rdi]);
            a.vextractf128(xmm3, ymm1, 1);
            a.vmovd(r9d, xmm3);
        });
        using (m)
        {
            Assert.Equal(-2, v);
            var r = m.Regs;
            Assert.Equal(6UL, r.Rbx); // SSE and AVX in use; the x87 bit keeps memory's value (0)
            Assert.Equal(0x3F800000UL, r.R8);
            Assert.Equal(0UL, r.R9);
            var image = new byte[1024];
            m.Memory.Read(new GuestAddress(Area), image);
            Assert.Equal(0x5A, image[0]); // x87 not requested: FCW left alone
            Assert.Equal(0x1F80u, BitConverter.ToUInt32(image, 24)); // MXCSR written with SSE
            Assert.Equal(0x3F800000u, BitConverter.ToUInt32(image, 160 + 16)); // XMM1 lane 0
            Assert.Equal(0x5A, image[470]); // bytes 416-511 untouched
            Assert.Equal(0x3F800000u, BitConverter.ToUInt32(image, 576 + 16)); // YMM1's upper half
        }
    }

    [Theory]
    [InlineData(8, 0)] // XSTATE_BV bit outside XCR0
    [InlineData(0, 1)] // XCOMP_BV set: no compacted form
    [InlineData(0, 2)] // a reserved header byte
    [InlineData(0, 3)] // a misaligned area
    public void Xrstor_refuses_a_bad_header_or_address_with_gp(long bv, int fault)
    {
        var (m, v) = Run(a =>
        {
            SetXcr0(a, 3);
            a.mov(rdi, Area);
            a.mov(eax, 3);
            a.xor(edx, edx);
            a.xsave(__[rdi]);
            a.mov(rax, bv);
            a.or(__qword_ptr[rdi + 512], rax);
            if (fault == 1)
            {
                a.mov(__qword_ptr[rdi + 520], 1);
            }
            else if (fault == 2)
            {
                a.mov(__qword_ptr[rdi + 560], 1);
            }
            else if (fault == 3)
            {
                a.add(rdi, 16);
            }

            a.mov(eax, 3);
            a.xor(edx, edx);
            a.xrstor(__[rdi]);
        });
        using (m)
        {
            Assert.Equal(13, v);
        }
    }
}
