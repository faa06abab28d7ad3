using Iced.Intel;
using Virt.X86;

namespace Virt.Cpu.Interpreter;

/// <summary>
/// The instruction-set extensions whose instructions raise #UD when the vCPU's CPUID table does not list them
/// (the table the guest sees, after the VM's masks): a guest that was told a feature is absent cannot use it.
/// </summary>
internal sealed partial class InterpreterVcpu
{
    // Extension bits of IsaByCode and _isaEnabled.
    private const byte IsaSse3 = 1, IsaSsse3 = 2, IsaSse41 = 4, IsaSse42 = 8, IsaBmi2 = 16, IsaMmx = 32, IsaRdrand = 64, IsaRdseed = 128;

    /// <summary>Per <see cref="Code"/>: the extensions (above) it needs, from Iced's CPUID feature list.</summary>
    private static readonly byte[] IsaByCode = BuildIsaByCode();

    /// <summary>The extensions the vCPU's CPUID table advertises.</summary>
    private byte _isaEnabled;

    private static byte[] BuildIsaByCode()
    {
        var map = new byte[Enum.GetValues<Code>().Length];
        foreach (var code in Enum.GetValues<Code>())
        {
            byte need = 0;
            foreach (var f in code.CpuidFeatures())
            {
                need |= f switch
                {
                    Iced.Intel.CpuidFeature.SSE3 => IsaSse3,
                    Iced.Intel.CpuidFeature.SSSE3 => IsaSsse3,
                    Iced.Intel.CpuidFeature.SSE4_1 => IsaSse41,
                    Iced.Intel.CpuidFeature.SSE4_2 => IsaSse42,
                    Iced.Intel.CpuidFeature.BMI2 => IsaBmi2,
                    Iced.Intel.CpuidFeature.MMX => IsaMmx,
                    Iced.Intel.CpuidFeature.RDRAND => IsaRdrand,
                    Iced.Intel.CpuidFeature.RDSEED => IsaRdseed,
                    _ => 0,
                };
            }

            map[(int)code] = need;
        }

        return map;
    }

    /// <summary>Recomputes <see cref="_isaEnabled"/> from the CPUID table (after construction and every SetCpuid).</summary>
    private void RefreshIsaFeatures()
    {
        uint ecx1 = 0, edx1 = 0, ebx7 = 0;
        foreach (var e in _cpuid)
        {
            if (e.Function == 1)
            {
                ecx1 = e.Ecx;
                edx1 = e.Edx;
            }
            else if (e.Function == 7 && e.Index == 0)
            {
                ebx7 = e.Ebx;
            }
        }

        byte r = 0;
        r |= (ecx1 & (1u << 0)) != 0 ? IsaSse3 : (byte)0;
        r |= (ecx1 & (1u << 9)) != 0 ? IsaSsse3 : (byte)0;
        r |= (ecx1 & (1u << 19)) != 0 ? IsaSse41 : (byte)0;
        r |= (ecx1 & (1u << 20)) != 0 ? IsaSse42 : (byte)0;
        r |= (ebx7 & (1u << 8)) != 0 ? IsaBmi2 : (byte)0;
        r |= (edx1 & (1u << 23)) != 0 ? IsaMmx : (byte)0;
        r |= (ecx1 & (1u << 30)) != 0 ? IsaRdrand : (byte)0;
        r |= (ebx7 & (1u << 18)) != 0 ? IsaRdseed : (byte)0;
        _isaEnabled = r;
        byte avx = 0;
        avx |= (ecx1 & (1u << 28)) != 0 ? AvxIsaAvx : (byte)0;
        avx |= (ecx1 & (1u << 12)) != 0 ? AvxIsaFma : (byte)0;
        avx |= (ecx1 & (1u << 29)) != 0 ? AvxIsaF16c : (byte)0;
        avx |= (ebx7 & (1u << 5)) != 0 ? AvxIsaAvx2 : (byte)0;
        _avxEnabled = avx;
        _hasXsave = (ecx1 & (1u << 26)) != 0;
        _hasMovbe = (ecx1 & (1u << 22)) != 0;
    }

    /// <summary>The extension bits (of <see cref="_isaEnabled"/>) <paramref name="code"/> needs; compiled code checks them as <see cref="CheckIsa"/> does.</summary>
    internal static byte IsaNeed(Code code) => IsaByCode[(int)code];

    /// <summary>#UD when <paramref name="code"/> belongs to an extension the CPUID table does not advertise.</summary>
    private void CheckIsa(Code code)
    {
        byte need = IsaByCode[(int)code];
        if ((need & _isaEnabled) != need)
        {
            throw Fault(Vectors.UD, 0);
        }
    }
}
