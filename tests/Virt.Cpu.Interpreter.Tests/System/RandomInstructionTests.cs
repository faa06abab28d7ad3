using Iced.Intel;
using Virt.Cpu.Interpreter.Tests.Sse;
using Virt.Testing;
using static Iced.Intel.AssemblerRegisters;

namespace Virt.Cpu.Interpreter.Tests;

/// <summary>
/// RDRAND and RDSEED: CPUID advertises them, each form writes its operand size and sets CF alone among the status
/// flags, the values differ from draw to draw, and a VM whose CPUID hides them gets #UD.
/// </summary>
public sealed class RandomInstructionTests
{
    private const int Done = -2;
    private const ulong StatusFlags = 0x8D5; // CF, PF, AF, ZF, SF, OF

    /// <summary>The interpreter's tiers, and KVM where the host processor has both instructions (the guest then runs them natively).</summary>
    public static TheoryData<string> Backends()
    {
        var data = new TheoryData<string> { "interpreter", "jit" };
        if (File.Exists("/proc/cpuinfo") && File.ReadAllText("/proc/cpuinfo") is var info && info.Contains(" rdrand", StringComparison.Ordinal)
            && info.Contains(" rdseed", StringComparison.Ordinal))
        {
            data.Add("kvm");
        }

        return data;
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public void Each_form_writes_its_operand_size_sets_cf_and_clears_the_other_status_flags(string backend)
    {
        var (r, _) = SseHarness.Run(backend, a =>
        {
            a.mov(rcx, -1L);
            a.mov(rdx, -1L);
            Draw(a, () => a.rdrand(rax), r8);
            Draw(a, () => a.rdrand(ecx), r9);  // a 32-bit destination clears bits 32-63
            Draw(a, () => a.rdrand(dx), r10);  // a 16-bit one keeps bits 16-63
            Draw(a, () => a.rdseed(rsi), r11);
            Draw(a, () => a.rdrand(rdi), r12);
            Draw(a, () => a.rdseed(r13), r14);
        });

        Assert.Equal(Done, r.Vector);
        foreach (int flagsReg in new[] { 8, 9, 10, 11, 12, 14 })
        {
            Assert.Equal(1UL, r.Gprs[flagsReg] & StatusFlags);
        }

        Assert.Equal(0UL, r.Gprs[1] >> 32);
        Assert.Equal(0xFFFF_FFFF_FFFFUL, r.Gprs[2] >> 16);
        ulong[] values = [r.Gprs[0], r.Gprs[6], r.Gprs[7], r.Gprs[13]];
        Assert.Equal(values.Length, values.Distinct().Count());
    }

    [Fact]
    public void Cpuid_advertises_both_and_masking_them_makes_them_raise_ud()
    {
        var (r, _) = SseHarness.Run("interpreter", a =>
        {
            a.mov(eax, 1);
            a.cpuid();
            a.mov(r8, rcx);
            a.mov(eax, 7);
            a.xor(ecx, ecx);
            a.cpuid();
            a.mov(r9, rbx);
        });
        Assert.Equal(Done, r.Vector);
        Assert.NotEqual(0UL, r.Gprs[8] & (1UL << 30));
        Assert.NotEqual(0UL, r.Gprs[9] & (1UL << 18));

        Assert.Equal(6, Machine.VectorRaisedAtCpl0(a => a.rdrand(rax), new PartitionOptions { MaskedCpuidFeatures = [CpuidFeature.Rdrand] }));
        Assert.Equal(6, Machine.VectorRaisedAtCpl0(a => a.rdseed(eax), new PartitionOptions { MaskedCpuidFeatures = [CpuidFeature.Rdseed] }));
        Assert.Equal(-2, Machine.VectorRaisedAtCpl0(a => a.rdseed(rax), new PartitionOptions { MaskedCpuidFeatures = [CpuidFeature.Rdrand] }));
    }

    /// <summary>
    /// Sets every status flag, retries <paramref name="draw"/> until it reports a value (hardware may answer "not
    /// ready" with CF clear), and keeps RFLAGS after it in <paramref name="flags"/>.
    /// </summary>
    private static void Draw(Assembler a, Action draw, AssemblerRegister64 flags)
    {
        var retry = a.CreateLabel();
        a.Label(ref retry);
        a.push((int)StatusFlags | 2);
        a.popfq();
        draw();
        a.jnc(retry);
        a.pushfq();
        a.pop(flags);
    }
}
