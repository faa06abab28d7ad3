
namespace Virt.Cpu.Whp;

/// <summary>What to do with an MSR exit.</summary>
internal enum MsrAction
{
    /// <summary>RDMSR of an MSR this backend maps to a WHP register: read it into EDX:EAX.</summary>
    ReadRegister,
    /// <summary>WRMSR of an MSR this backend maps to a WHP register: write EDX:EAX to it.</summary>
    WriteRegister,
    /// <summary>An MSR nothing implements: inject #GP(0), as a processor (and KVM by default) does.</summary>
    InjectGeneralProtection,
}

/// <summary>The decision for an MSR exit: the action, the register, and for writes the value.</summary>
internal readonly record struct MsrDecision(MsrAction Action, WhvRegisterName Register, ulong Value);

/// <summary>Whether a queued external interrupt can be injected now.</summary>
internal enum InjectionDecision
{
    /// <summary>Nothing is queued.</summary>
    Nothing,
    /// <summary>Write the pending-interruption register now.</summary>
    Inject,
    /// <summary>The guest cannot take it yet: ask for an interrupt-window exit and retry then.</summary>
    WaitForWindow,
}

/// <summary>Pure decisions of the run loop, kept apart from the Windows calls so that they are tested everywhere.</summary>
internal static class VcpuDecisions
{
    /// <summary>RFLAGS.IF: maskable interrupts enabled.</summary>
    public const ulong RflagsInterruptEnable = 1UL << 9;

    /// <summary>WHV_X64_INTERRUPT_STATE_REGISTER bit 0: the instruction after STI or MOV SS blocks interrupts.</summary>
    public const ulong InterruptShadow = 1UL << 0;

    /// <summary>WHV_X64_DELIVERABILITY_NOTIFICATIONS_REGISTER bit 1: exit when a maskable interrupt can be delivered.</summary>
    public const ulong InterruptNotification = 1UL << 1;

    public static MsrDecision DecideMsr(in WHV_X64_MSR_ACCESS_CONTEXT msr)
    {
        if (!RegisterMap.Msrs.TryGetValue(msr.MsrNumber, out var register))
        {
            return new(MsrAction.InjectGeneralProtection, default, 0);
        }

        return msr.IsWrite
            ? new(MsrAction.WriteRegister, register, ((msr.Rdx & 0xFFFF_FFFF) << 32) | (msr.Rax & 0xFFFF_FFFF))
            : new(MsrAction.ReadRegister, register, 0);
    }

    /// <param name="queuedVector">The queued vector, or a negative number when none is queued.</param>
    /// <param name="rflags">Guest RFLAGS.</param>
    /// <param name="interruptState">WHvRegisterInterruptState.</param>
    /// <param name="pendingInterruption">WHvRegisterPendingInterruption (an event the hypervisor has not delivered yet).</param>
    public static InjectionDecision DecideInjection(int queuedVector, ulong rflags, ulong interruptState, ulong pendingInterruption)
    {
        if (queuedVector < 0)
        {
            return InjectionDecision.Nothing;
        }

        bool canTake = (rflags & RflagsInterruptEnable) != 0
            && (interruptState & InterruptShadow) == 0
            && !WhvPendingInterruption.IsPending(pendingInterruption);
        return canTake ? InjectionDecision.Inject : InjectionDecision.WaitForWindow;
    }
}
