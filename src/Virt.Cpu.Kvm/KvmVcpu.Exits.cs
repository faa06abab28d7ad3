using static Virt.Cpu.Kvm.Interop.Kvm;

namespace Virt.Cpu.Kvm;

internal sealed unsafe partial class KvmVcpu
{
    /// <summary>
    /// Turns the exit KVM left in <c>kvm_run</c> into a <see cref="VcpuExit"/>. Returns <see langword="false"/>
    /// for exits handled here (the interrupt window), after which the guest is re-entered.
    /// </summary>
    private bool TryTranslateExit(KvmRun* run, out VcpuExit exit)
    {
        switch (run->ExitReason)
        {
            case KVM_EXIT_IO:
                exit = TranslateIo(run);
                return true;
            case KVM_EXIT_MMIO:
                exit = TranslateMmio(run);
                return true;
            case KVM_EXIT_HLT:
                exit = VcpuExit.Simple(VcpuExitReason.Halt);
                return true;
            case KVM_EXIT_IRQ_WINDOW_OPEN:
                exit = default;
                return false;
            case KVM_EXIT_INTR:
                // KVM_RUN returned 0 with a pending-signal exit: treat it like EINTR.
                if (Interlocked.Exchange(ref _exitRequested, 0) != 0)
                {
                    Volatile.Write(ref run->ImmediateExit, 0);
                    exit = VcpuExit.Simple(VcpuExitReason.Interrupted);
                    return true;
                }

                exit = default;
                return false;
            case KVM_EXIT_SHUTDOWN:
                exit = VcpuExit.Failure(VcpuExitReason.Shutdown, BuildFault("The guest shut down (triple fault)", 0));
                return true;
            case KVM_EXIT_FAIL_ENTRY:
                exit = VcpuExit.Failure(VcpuExitReason.FailEntry, BuildFault(
                    $"KVM could not enter the guest: hardware entry failure reason 0x{run->HardwareEntryFailureReason:x} on host CPU {run->FailEntryCpu}",
                    run->HardwareEntryFailureReason));
                return true;
            case KVM_EXIT_INTERNAL_ERROR:
                exit = VcpuExit.Failure(VcpuExitReason.InternalError, BuildFault(DescribeInternalError(run), run->InternalSuberror));
                return true;
            case KVM_EXIT_SYSTEM_EVENT:
                exit = run->SystemEventType switch
                {
                    KVM_SYSTEM_EVENT_SHUTDOWN => VcpuExit.FromSystemEvent(SystemEventKind.Shutdown),
                    KVM_SYSTEM_EVENT_RESET => VcpuExit.FromSystemEvent(SystemEventKind.Reset),
                    KVM_SYSTEM_EVENT_CRASH => VcpuExit.FromSystemEvent(SystemEventKind.Crash),
                    _ => VcpuExit.Failure(VcpuExitReason.InternalError, BuildFault($"KVM system event of unsupported type {run->SystemEventType}", run->SystemEventType)),
                };
                return true;
            case KVM_EXIT_HYPERCALL:
                exit = VcpuExit.Hypercall(run->HypercallNr);
                return true;
            case KVM_EXIT_DEBUG:
                // #BP (vector 3) is an intercepted INT3 with RIP still at it; #DB reports single steps and breakpoints in DR6.
                exit = run->DebugException == 3
                    ? VcpuExit.DebugEvent(0, breakpointInstruction: true)
                    : VcpuExit.DebugEvent(run->DebugDr6, breakpointInstruction: false);
                return true;
            case KVM_EXIT_EXCEPTION:
                exit = VcpuExit.Exception((byte)run->ExceptionNumber, BuildFault($"Guest exception {run->ExceptionNumber} (error code 0x{run->ExceptionErrorCode:x})", run->ExceptionNumber));
                return true;
            case KVM_EXIT_UNKNOWN:
                exit = VcpuExit.Failure(VcpuExitReason.InternalError, BuildFault($"KVM exit of unknown cause: hardware exit reason 0x{run->HardwareExitReason:x}", run->HardwareExitReason));
                return true;
            default:
                exit = VcpuExit.Failure(VcpuExitReason.InternalError, BuildFault($"Unhandled KVM exit reason {run->ExitReason}", run->ExitReason));
                return true;
        }
    }

    private VcpuExit TranslateIo(KvmRun* run)
    {
        int size = run->IoSize;
        uint count = run->IoCount;
        ulong offset = run->IoDataOffset;
        ulong length = (ulong)size * count;
        // kvm_run comes from the kernel, but the data area must be inside our mapping before a span is made over it.
        if (size is not (1 or 2 or 4) || count == 0 || offset < (ulong)KvmRun.Size || offset > (ulong)_runSize || length > (ulong)_runSize - offset)
        {
            return VcpuExit.Failure(VcpuExitReason.InternalError, BuildFault($"Malformed KVM I/O exit: port 0x{run->IoPort:x}, size {size}, count {count}, data offset {offset}", KVM_EXIT_IO));
        }

        _exitDataOffset = (int)offset;
        _exitDataLength = (int)length;
        return VcpuExit.PortIo(run->IoPort, size, (int)count, run->IoDirection == KVM_EXIT_IO_OUT);
    }

    private VcpuExit TranslateMmio(KvmRun* run)
    {
        uint len = run->MmioLen;
        if (len is 0 or > 8)
        {
            return VcpuExit.Failure(VcpuExitReason.InternalError, BuildFault($"Malformed KVM MMIO exit: address 0x{run->MmioPhysAddr:x}, length {len}", KVM_EXIT_MMIO));
        }

        _exitDataOffset = (int)((byte*)run->MmioData - (byte*)run);
        _exitDataLength = (int)len;
        return VcpuExit.Mmio(new GuestAddress(run->MmioPhysAddr), (int)len, run->MmioIsWrite != 0);
    }

    private static string DescribeInternalError(KvmRun* run)
    {
        uint sub = run->InternalSuberror;
        string what = sub switch
        {
            KVM_INTERNAL_ERROR_EMULATION => "instruction emulation failed",
            KVM_INTERNAL_ERROR_SIMUL_EX => "exception raised while delivering another exception",
            KVM_INTERNAL_ERROR_DELIVERY_EV => "exit while delivering an event",
            KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON => "unexpected hardware exit reason",
            _ => "unknown sub-error",
        };
        uint n = Math.Min(run->InternalNdata, 16u);
        var data = new string[n];
        for (int i = 0; i < n; i++)
        {
            data[i] = "0x" + run->InternalData[i].ToString("x", System.Globalization.CultureInfo.InvariantCulture);
        }

        return $"KVM internal error {sub}: {what}; {run->InternalNdata} data word(s) [{string.Join(", ", data)}]";
    }

    /// <summary>A fault with the registers, RIP and the instruction bytes at RIP (read through the guest's page tables).</summary>
    private VcpuFault BuildFault(string description, ulong code)
    {
        GeneralRegisters? regs = null;
        ulong rip = 0;
        byte[] bytes = [];
        try
        {
            var r = ReadGeneralRegisters();
            regs = r;
            rip = r.Rip;
            var s = GetSpecialRegisters();
            bytes = GuestPageWalker.ReadInstructionBytes(_partition.Memory, s, rip);
        }
        catch (HypervisorException)
        {
            // The state is not readable: report what is known rather than throwing from Run.
        }

        return new VcpuFault(description, code, rip, bytes, regs);
    }
}
