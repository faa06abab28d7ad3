using System.Globalization;

namespace Virt.Cpu.Whp;

/// <summary>What the run loop does with one WHP exit.</summary>
internal enum ExitAction
{
    /// <summary>Return <see cref="TranslatedExit.Exit"/> from <see cref="IVirtualCpu.Run"/>.</summary>
    Return,
    /// <summary>Enter the guest again (interrupt window opened, a cancel nobody asked the caller to see, APIC EOI).</summary>
    Resume,
    /// <summary>Emulate the I/O port instruction with the WHP emulator; <see cref="TranslatedExit.Exit"/> is the PortIo header.</summary>
    EmulateIo,
    /// <summary>Emulate the memory instruction with the WHP emulator; <see cref="TranslatedExit.Exit"/> is the Mmio header (size comes from the emulator).</summary>
    EmulateMmio,
    /// <summary>Complete CPUID with the vCPU's CPUID table and skip the instruction.</summary>
    AnswerCpuid,
    /// <summary>Complete RDMSR/WRMSR (or inject #GP) and skip the instruction.</summary>
    AnswerMsr,
}

/// <summary>The translation of a WHV_RUN_VP_EXIT_CONTEXT into the run loop's next step.</summary>
internal readonly record struct TranslatedExit(ExitAction Action, VcpuExit Exit);

/// <summary>
/// Translates WHP exits into the shared <see cref="VcpuExit"/> values. A pure function over the exit
/// context (no Windows calls), so it is tested on every OS with hand-built contexts.
/// </summary>
internal static class ExitTranslator
{
    /// <summary>Exception vector of a general-protection fault.</summary>
    public const byte GeneralProtectionVector = 13;

    /// <summary>Translates <paramref name="exit"/>.</summary>
    /// <param name="exit">The exit context WHvRunVirtualProcessor filled.</param>
    /// <param name="exitRequested">Whether the caller asked for this run to stop (<see cref="IVirtualCpu.RequestExit"/>).</param>
    public static TranslatedExit Translate(in WHV_RUN_VP_EXIT_CONTEXT exit, bool exitRequested)
    {
        ulong rip = exit.VpContext.Rip;
        switch (exit.ExitReason)
        {
            case WhvRunVpExitReason.X64IoPortAccess:
            {
                var io = exit.IoPortAccess;
                int size = io.AccessSize;
                if (size is not (1 or 2 or 4))
                {
                    return Fail(VcpuExitReason.InternalError, $"I/O port access of unsupported size {size}", (ulong)size, exit);
                }

                return new(ExitAction.EmulateIo, VcpuExit.PortIo(io.PortNumber, size, 1, io.IsWrite));
            }

            case WhvRunVpExitReason.MemoryAccess:
            {
                var m = exit.MemoryAccess;
                var type = m.AccessType;
                if (type == WhvMemoryAccessType.Execute)
                {
                    return Fail(VcpuExitReason.InternalError, $"guest executed at guest physical address 0x{m.Gpa:x}, which is not RAM", m.Gpa, exit);
                }

                // Unmapped addresses are MMIO; a write to a mapped (read-only) range is a write to ROM,
                // which every backend reports as an MMIO write the way KVM does for read-only slots.
                if (m.GpaUnmapped || type == WhvMemoryAccessType.Write)
                {
                    return new(ExitAction.EmulateMmio, VcpuExit.Mmio(new GuestAddress(m.Gpa), 0, type == WhvMemoryAccessType.Write));
                }

                return Fail(VcpuExitReason.InternalError, $"unexpected read fault on mapped guest physical address 0x{m.Gpa:x}", m.Gpa, exit);
            }

            case WhvRunVpExitReason.X64Halt:
                return new(ExitAction.Return, VcpuExit.Simple(VcpuExitReason.Halt));

            case WhvRunVpExitReason.X64Cpuid:
                return new(ExitAction.AnswerCpuid, default);

            case WhvRunVpExitReason.X64MsrAccess:
                return new(ExitAction.AnswerMsr, default);

            case WhvRunVpExitReason.Canceled:
                return exitRequested
                    ? new(ExitAction.Return, VcpuExit.Simple(VcpuExitReason.Interrupted))
                    : new(ExitAction.Resume, default);

            case WhvRunVpExitReason.X64InterruptWindow:
            case WhvRunVpExitReason.X64ApicEoi:
                return new(ExitAction.Resume, default);

            case WhvRunVpExitReason.UnrecoverableException:
                return Fail(VcpuExitReason.Shutdown, "unrecoverable guest exception (triple fault)", 0, exit);

            case WhvRunVpExitReason.InvalidVpRegisterValue:
                return Fail(VcpuExitReason.FailEntry, "the hypervisor refused to enter the guest: a virtual processor register holds an invalid value", 0, exit);

            case WhvRunVpExitReason.UnsupportedFeature:
            {
                var f = exit.UnsupportedFeature;
                string what = f.FeatureCode == 2 ? "task switch through a TSS" : "unsupported intercept";
                return Fail(VcpuExitReason.InternalError, $"the hypervisor cannot run the guest: {what} (parameter 0x{f.FeatureParameter:x})", f.FeatureCode, exit);
            }

            case WhvRunVpExitReason.Exception:
            {
                var e = exit.VpException;
                var bytes = InstructionBytes(exit);
                bool hasCode = (e.ExceptionInfo & 1) != 0;
                string description = hasCode
                    ? string.Create(CultureInfo.InvariantCulture, $"guest exception {e.ExceptionType} with error code 0x{e.ErrorCode:x}")
                    : string.Create(CultureInfo.InvariantCulture, $"guest exception {e.ExceptionType}");
                return new(ExitAction.Return, VcpuExit.Exception(e.ExceptionType, new VcpuFault(description, e.ErrorCode, rip, bytes, null)));
            }

            case WhvRunVpExitReason.Hypercall:
                return new(ExitAction.Return, VcpuExit.Hypercall(exit.Hypercall.Rax));

            default:
                return Fail(VcpuExitReason.InternalError, $"unexpected WHP exit reason 0x{(uint)exit.ExitReason:x}", (uint)exit.ExitReason, exit);
        }
    }

    /// <summary>The 32-bit result registers of CPUID.</summary>
    internal readonly record struct CpuidResult(uint Eax, uint Ebx, uint Ecx, uint Edx);

    /// <summary>
    /// Answers a CPUID exit from <paramref name="table"/> (the vCPU's leaves); leaves not in the table get the
    /// hypervisor's default answer. A table entry is combined with that default the way KVM combines the
    /// VMM's CPUID with what it supports: feature words keep only bits the hypervisor also offers (a guest
    /// must never see a feature it cannot use), and fields that follow the processor's own state
    /// (APIC IDs, OSXSAVE/OSPKE, the XSAVE area size) come from the default.
    /// </summary>
    public static CpuidResult AnswerCpuid(in WHV_X64_CPUID_ACCESS_CONTEXT c, IReadOnlyList<CpuidEntry> table)
    {
        uint function = (uint)c.Rax;
        uint index = (uint)c.Rcx;
        var defaults = new CpuidResult((uint)c.DefaultResultRax, (uint)c.DefaultResultRbx, (uint)c.DefaultResultRcx, (uint)c.DefaultResultRdx);
        if (!CpuidPolicy.TryFind(table, function, index, out var e))
        {
            return defaults;
        }

        Span<uint> r = [e.Eax, e.Ebx, e.Ecx, e.Edx];
        ReadOnlySpan<uint> d = [defaults.Eax, defaults.Ebx, defaults.Ecx, defaults.Edx];
        foreach (var w in CpuidPolicy.FeatureWords)
        {
            if (w.Function == function && w.Index == index)
            {
                r[(int)w.Register] &= d[(int)w.Register];
            }
        }

        foreach (var f in CpuidPolicy.DynamicFields)
        {
            if (f.Function == function && (f.AnyIndex || f.Index == index))
            {
                int i = (int)f.Register;
                r[i] = (r[i] & ~f.Mask) | (d[i] & f.Mask);
            }
        }

        return new CpuidResult(r[0], r[1], r[2], r[3]);
    }

    private static TranslatedExit Fail(VcpuExitReason reason, string description, ulong code, in WHV_RUN_VP_EXIT_CONTEXT exit) =>
        new(ExitAction.Return, VcpuExit.Failure(reason, new VcpuFault(description, code, exit.VpContext.Rip, InstructionBytes(exit), null)));

    /// <summary>The instruction bytes the hypervisor captured with the exit, where the exit kind has them.</summary>
    internal static unsafe byte[] InstructionBytes(in WHV_RUN_VP_EXIT_CONTEXT exit)
    {
        fixed (WHV_RUN_VP_EXIT_CONTEXT* p = &exit)
        {
            // SAFETY: p points at a pinned 224-byte exit context; the instruction-byte fields of the
            // memory, I/O and exception contexts lie inside it and their count is clamped to 16.
            switch (exit.ExitReason)
            {
                case WhvRunVpExitReason.MemoryAccess:
                    return Copy(p->MemoryAccess.InstructionBytes, p->MemoryAccess.InstructionByteCount);
                case WhvRunVpExitReason.X64IoPortAccess:
                    return Copy(p->IoPortAccess.InstructionBytes, p->IoPortAccess.InstructionByteCount);
                case WhvRunVpExitReason.Exception:
                    return Copy(p->VpException.InstructionBytes, p->VpException.InstructionByteCount);
                default:
                    return [];
            }
        }

        static byte[] Copy(byte* bytes, byte count) => new ReadOnlySpan<byte>(bytes, Math.Min((int)count, 16)).ToArray();
    }
}
