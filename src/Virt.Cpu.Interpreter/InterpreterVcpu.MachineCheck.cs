namespace Virt.Cpu.Interpreter;

/// <summary>
/// The machine-check MSRs every KVM guest has (KVM's <c>emulated_msrs</c>, with the banks QEMU sets up through
/// <c>KVM_X86_SETUP_MCE</c>): IA32_MCG_CAP, IA32_MCG_STATUS, IA32_MCG_CTL and MCi_CTL/STATUS/ADDR/MISC, with KVM's
/// write rules; and IA32_BIOS_SIGN_ID. Nothing raises a machine check: the banks hold what was written.
/// </summary>
internal static class MachineCheck
{
    /// <summary>Machine-check banks, as many as QEMU gives a KVM guest by default.</summary>
    public const int MachineCheckBanks = 10;

    /// <summary>IA32_BIOS_SIGN_ID at reset: KVM's default microcode revision 1 in bits 63:32.</summary>
    public const ulong MicrocodeRevisionReset = 0x1_0000_0000;

    public const uint MsrMcgCap = 0x179, MsrMcgStatus = 0x17A, MsrMcgCtl = 0x17B, MsrMc0Ctl = 0x400, MsrBiosSignId = 0x8B;

    /// <summary>IA32_MCG_CAP bit 8: IA32_MCG_CTL is present.</summary>
    public const ulong McgCtlPresent = 1UL << 8;

    /// <summary>IA32_MCG_CAP: the bank count and MCG_CTL_P; read-only for the guest.</summary>
    public const ulong McgCap = MachineCheckBanks | McgCtlPresent;

    /// <summary>The MSR indices this file serves, for the supported-MSR list.</summary>
    public static uint[] MsrIndices()
    {
        var list = new uint[4 + (4 * MachineCheckBanks)];
        list[0] = MsrBiosSignId;
        list[1] = MsrMcgCap;
        list[2] = MsrMcgStatus;
        list[3] = MsrMcgCtl;
        for (uint i = 0; i < 4 * MachineCheckBanks; i++)
        {
            list[4 + i] = MsrMc0Ctl + i;
        }

        return list;
    }
}

/// <summary>The machine-check MSRs of one vCPU (see <see cref="MachineCheck"/>).</summary>
internal sealed partial class InterpreterVcpu
{
    private const int MachineCheckBanks = MachineCheck.MachineCheckBanks;
    private const uint MsrMcgCap = MachineCheck.MsrMcgCap, MsrMcgStatus = MachineCheck.MsrMcgStatus, MsrMcgCtl = MachineCheck.MsrMcgCtl;
    private const uint MsrMc0Ctl = MachineCheck.MsrMc0Ctl, MsrBiosSignId = MachineCheck.MsrBiosSignId;
    private const ulong McgCap = MachineCheck.McgCap;

    /// <summary>Reads a machine-check MSR; false when <paramref name="index"/> is not one (<paramref name="exists"/> is then meaningless).</summary>
    private bool TryReadMachineCheckMsr(uint index, out ulong v, out bool exists)
    {
        exists = true;
        switch (index)
        {
            case MsrBiosSignId: v = _cpu.MicrocodeRevision; return true;
            case MsrMcgCap: v = McgCap; return true;
            case MsrMcgStatus: v = _cpu.McgStatus; return true;
            case MsrMcgCtl: v = _cpu.McgCtl; return true;
            case >= MsrMc0Ctl and < MsrMc0Ctl + (4 * MachineCheckBanks):
                v = _cpu.McBanks[(int)(index - MsrMc0Ctl)];
                return true;
            default:
                v = 0;
                exists = false;
                return false;
        }
    }

    /// <summary>Writes a machine-check MSR with KVM's rules (<c>set_msr_mce</c>); false when <paramref name="index"/> is not one.</summary>
    private bool TryWriteMachineCheckMsr(uint index, ulong v, bool fromGuest, out bool accepted)
    {
        switch (index)
        {
            case MsrBiosSignId:
                // The guest writes 0 before CPUID to ask for the revision; only the host changes it.
                if (!fromGuest)
                {
                    _cpu.MicrocodeRevision = v;
                }

                accepted = true;
                return true;
            case MsrMcgCap:
                accepted = !fromGuest && v == McgCap;
                return true;
            case MsrMcgStatus:
                _cpu.McgStatus = v;
                accepted = true;
                return true;
            case MsrMcgCtl:
                // All banks on or all off.
                accepted = v is 0 or ulong.MaxValue;
                if (accepted)
                {
                    _cpu.McgCtl = v;
                }

                return true;
            case >= MsrMc0Ctl and < MsrMc0Ctl + (4 * MachineCheckBanks):
            {
                int offset = (int)(index - MsrMc0Ctl);
                accepted = (offset & 3) switch
                {
                    // MCi_CTL: 0 or all ones (bits 10 and 0 may be clear, a quirk KVM keeps for old Linux on AMD).
                    0 => v == 0 || (v | (1UL << 10) | 1) == ulong.MaxValue,

                    // MCi_STATUS: the guest may only clear it.
                    1 => !fromGuest || v == 0,
                    _ => true,
                };
                if (accepted)
                {
                    _cpu.McBanks[offset] = v;
                }

                return true;
            }

            default:
                accepted = false;
                return false;
        }
    }
}
