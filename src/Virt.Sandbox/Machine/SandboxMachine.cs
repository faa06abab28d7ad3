using System.Diagnostics;
using System.Runtime.InteropServices;
using Virt.Cpu;
using Virt.Memory;
using Virt.Sandbox.Linux;
using Virt.Sandbox.Loader;

namespace Virt.Sandbox.Machine;

/// <summary>
/// One micro-VM running one program: guest memory, a partition with one vCPU, the address space and
/// the ABI layer, plus the snapshot it resets to. Not thread-safe: every method runs on the owning
/// sandbox's vCPU thread.
/// </summary>
internal sealed class SandboxMachine : IDisposable
{
    private const int RegionIndex = 0;
    private static readonly string[] VectorNames =
    [
        "#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "CSO", "#TS", "#NP", "#SS", "#GP", "#PF", "#15",
        "#MF", "#AC", "#MC", "#XM", "#VE", "#CP", "#22", "#23", "#24", "#25", "#26", "#27", "#HV", "#VC", "#SX", "#31",
    ];

    private readonly SandboxConfiguration _config;
    private readonly GuestMemory _memory;
    private readonly IPartition _partition;
    private readonly IVirtualCpu _vcpu;
    private readonly AddressSpace _space;
    private readonly ArenaAllocator _arena;
    private readonly LinuxAbi _abi;
    private readonly bool _fsBaseByMsr;
    private readonly bool _restoreMarksWrites;
    private Snapshot? _snapshot;
    private bool _dirty;

    private SandboxMachine(SandboxConfiguration config, ElfImage image, IHypervisor hypervisor)
    {
        _config = config;
        _memory = GuestMemory.CreateRam(config.MemoryBytes);
        try
        {
            _space = AddressSpace.Build(_memory, image, (ulong)config.StackBytes + (64 * 1024));
            Supervisor.Install(_memory);
            _arena = new ArenaAllocator(_memory, _space.ArenaPhysical, _space.ArenaPages, config.StackBytes / (int)GuestLayout.PageSize);
            _restoreMarksWrites = image.ExecutableStack || image.Segments.Any(s => (s.Flags & (SegmentFlags.Write | SegmentFlags.Execute)) == (SegmentFlags.Write | SegmentFlags.Execute));
            _partition = hypervisor.CreatePartition(_memory, new PartitionOptions
            {
                TrackDirtyPages = config.SnapshotReset,
                MaskedCpuidFeatures = [CpuidFeature.Xsave, CpuidFeature.Avx, CpuidFeature.Avx2, CpuidFeature.Avx512F],
            });
            try
            {
                _vcpu = _partition.CreateVcpu(0);
                _fsBaseByMsr = _partition.SupportedMsrs.Contains(MsrIndex.FsBase);
                _abi = new LinuxAbi(config, _memory, _space, _arena, SetFsBase);
                StartProgram(image);
            }
            catch
            {
                _vcpu?.Dispose();
                _partition.Dispose();
                throw;
            }
        }
        catch
        {
            _memory.Dispose();
            throw;
        }
    }

    /// <summary>Whether the machine can serve another run (it has a snapshot, or has not run yet).</summary>
    public bool CanRunAgain => !_broken && (_snapshot is not null || !_dirty);

    /// <summary>Whether a snapshot was taken at the program's ready point.</summary>
    public bool HasSnapshot => _snapshot is not null;

    /// <summary>The hypervisor's name.</summary>
    public string BackendName => _partition.Hypervisor.Name;

    /// <summary>Creates the VM and loads <paramref name="image"/> (throws for a bad configuration or a refusing backend).</summary>
    public static SandboxMachine Create(SandboxConfiguration config, ElfImage image, IHypervisor hypervisor) => new(config, image, hypervisor);

    private void StartProgram(ElfImage image)
    {
        var cpuid = _partition.SupportedCpuid;
        _vcpu.SetCpuid(cpuid);
        uint hwcap = cpuid.FirstOrDefault(e => e.Function == 1).Edx;
        var random = new byte[16];
        if (_config.RandomSeed is int seed)
        {
#pragma warning disable CA5394 // Reproducible runs on request.
            new Random(seed).NextBytes(random);
#pragma warning restore CA5394
        }
        else
        {
            System.Security.Cryptography.RandomNumberGenerator.Fill(random);
        }

        var argv = new List<string> { _config.ExecutablePath };
        argv.AddRange(_config.Arguments);
        var aux = new List<(ulong, ulong)>
        {
            (AuxKey.Phdr, image.ProgramHeaderAddress), (AuxKey.Phent, 56), (AuxKey.Phnum, (ulong)image.ProgramHeaderCount),
            (AuxKey.Pagesz, GuestLayout.PageSize), (AuxKey.Base, 0), (AuxKey.Flags, 0), (AuxKey.Entry, image.Entry),
            (AuxKey.Uid, 1000), (AuxKey.Euid, 1000), (AuxKey.Gid, 1000), (AuxKey.Egid, 1000), (AuxKey.Hwcap, hwcap),
            (AuxKey.Hwcap2, 0), (AuxKey.Clktck, 100), (AuxKey.Secure, 0),
        };
        var stack = InitialStack.Build(_arena.StackTop, argv, _config.Environment, _config.ExecutablePath, random, aux, _arena.StackBytes);
        if (!_space.TryWriteUser(stack.Rsp, stack.Bytes, _memory))
        {
            throw new InvalidOperationException("The initial stack is not writable user memory.");
        }

        var sregs = Supervisor.UserStart(_vcpu.GetSpecialRegisters(), _space.Cr3);
        _vcpu.SetSpecialRegisters(sregs);
        _vcpu.SetMsrs(Supervisor.SyscallMsrs());
        _vcpu.SetFpuState(FpuState.Initial);
        _vcpu.SetGeneralRegisters(new GeneralRegisters { Rip = image.Entry, Rsp = stack.Rsp, Rflags = Supervisor.InitialUserFlags });
    }

    private void SetFsBase(ulong value)
    {
        if (_fsBaseByMsr)
        {
            _vcpu.SetMsrs([new MsrEntry(MsrIndex.FsBase, value)]);
            return;
        }

        var s = _vcpu.GetSpecialRegisters();
        s.Fs.Base = value;
        _vcpu.SetSpecialRegisters(s);
    }

    /// <summary>Runs the program (or, with a snapshot, resets to it and resumes) with <paramref name="stdin"/> as input.</summary>
    public SandboxResult Run(ReadOnlyMemory<byte> stdin, CancellationToken cancellationToken)
    {
        if (!CanRunAgain)
        {
            throw new InvalidOperationException("The machine has run and has no snapshot to reset to.");
        }

        var watch = Stopwatch.StartNew();
        long instructionsBefore = (_vcpu as IInstructionCounting)?.InstructionsRetired ?? 0;
        int restored = 0;
        _abi.BeginRun(stdin);
        Outcome? outcome = null;
        if (_snapshot is not null)
        {
            restored = Restore(_snapshot, out outcome);
        }

        _dirty = true;
        if (_vcpu is IInstructionCounting counting)
        {
            counting.InstructionBudget = _config.InstructionLimit;
        }

        long deadline = Stopwatch.GetTimestamp() + (long)(_config.TimeLimit.TotalSeconds * Stopwatch.Frequency);
        using var timer = new Timer(static s => ((IVirtualCpu)s!).RequestExit(), _vcpu, _config.TimeLimit, Timeout.InfiniteTimeSpan);
        using var registration = cancellationToken.Register(static s => ((IVirtualCpu)s!).RequestExit(), _vcpu);
        if (outcome is null && _snapshot is not null)
        {
            // The restored vCPU sits at the ready point's system call: serve it with the new input.
            var regs = _snapshot.Registers;
            outcome = _snapshot.Kind == ExitKind.Doorbell ? ServeDoorbell(ref regs, resumed: true) : ServeUd(ref regs, resumed: true);
        }

        while (outcome is null)
        {
            var exit = _vcpu.Run();
            outcome = OnExit(exit, deadline, cancellationToken);
        }

        watch.Stop();
        long? instructions = _vcpu is IInstructionCounting c ? c.InstructionsRetired - instructionsBefore : null;
        var status = outcome.Status;
        string? message = outcome.Message;
        if (_arena.LimitReached && status is not SandboxStatus.TimeLimitExceeded and not SandboxStatus.Cancelled &&
            !(status == SandboxStatus.Exited && outcome.ExitCode == 0))
        {
            message = $"A memory request was refused (limit {_config.MemoryBytes} bytes), then the run ended: {outcome.Status} {outcome.Message ?? outcome.ExitCode.ToString(System.Globalization.CultureInfo.InvariantCulture)}";
            status = SandboxStatus.MemoryLimitExceeded;
        }

        return new SandboxResult
        {
            Status = status,
            ExitCode = outcome.Status == SandboxStatus.Exited ? outcome.ExitCode : -1,
            Signal = outcome.Signal,
            Stdout = _abi.Stdout.ToArray(),
            Stderr = _abi.Stderr.ToArray(),
            Fault = outcome.Fault,
            Message = message,
            Usage = new SandboxResourceUsage(watch.Elapsed, instructions, (long)_arena.PeakPages * (long)GuestLayout.PageSize, _abi.SystemCalls, restored),
            UnsupportedSystemCalls = new Dictionary<string, int>(_abi.Unsupported),
        };
    }

    private sealed record Outcome(SandboxStatus Status, int ExitCode, int? Signal, string? Message, SandboxFault? Fault);

    private static Outcome Stopped(SandboxStatus status, string message) => new(status, -1, null, message, null);

    /// <summary>Which kind of exit the vCPU is stopped in; a backend may complete it when the vCPU next runs.</summary>
    private enum ExitKind
    {
        None,
        Doorbell,
        Stub,
    }

    private ExitKind _pending;
    private bool _cplChecked;
    private bool _broken;

    private Outcome? OnExit(VcpuExit exit, long deadline, CancellationToken cancellationToken)
    {
        switch (exit.Reason)
        {
            case VcpuExitReason.Mmio when exit.Address.Value == GuestLayout.DoorbellPhysical && !exit.IsWrite && exit.Size == 8:
            {
                _pending = ExitKind.Doorbell;
                var regs = _vcpu.GetGeneralRegisters();
                if (regs.Rip != GuestLayout.TrampolineAddress)
                {
                    return Stopped(SandboxStatus.ForbiddenOperation, $"The program read the system-call doorbell from 0x{regs.Rip:x} instead of through SYSCALL.");
                }

                if (!_cplChecked)
                {
                    // Only a CPU whose SYSCALL stays at CPL 3 may take this path: check once per machine.
                    _cplChecked = true;
                    if ((_vcpu.GetSpecialRegisters().Cs.Selector & 3) != 3)
                    {
                        _broken = true;
                        return Stopped(SandboxStatus.BackendFailure, "SYSCALL reached the trampoline at CPL 0 although EFER.SCE is clear; this backend is not supported.");
                    }
                }

                if (_config.SnapshotReset && _snapshot is null && _abi.IsReadyPoint(regs))
                {
                    _snapshot = TakeSnapshot(regs, ExitKind.Doorbell);
                }

                return ServeDoorbell(ref regs, resumed: false);
            }

            case VcpuExitReason.PortIo when exit.Port >= GuestLayout.ExceptionPortBase && exit.Port < GuestLayout.ExceptionPortBase + GuestLayout.ExceptionVectors:
                _pending = ExitKind.Stub;
                return OnException(exit.Port - GuestLayout.ExceptionPortBase);
            case VcpuExitReason.Interrupted:
                return OnInterrupted(deadline, cancellationToken);
            case VcpuExitReason.BudgetExhausted:
                return Stopped(SandboxStatus.TimeLimitExceeded, $"The program used its budget of {_config.InstructionLimit} instructions.");
            case VcpuExitReason.Exception:
                _broken = true;
                return OnException((int)exit.Value);
            case VcpuExitReason.Shutdown:
                _broken = true;
                return Stopped(SandboxStatus.GuestFault, $"The guest shut down (triple fault): {exit.Fault}");
            case VcpuExitReason.InternalError or VcpuExitReason.FailEntry:
                _broken = true;
                return Stopped(SandboxStatus.BackendFailure, $"The backend stopped the guest: {exit}");
            default:
                _broken = true;
                return Stopped(SandboxStatus.ForbiddenOperation, $"Unexpected exit from the guest: {exit}");
        }
    }

    /// <summary>Serves a system call that arrived through the trampoline: the result goes back as the doorbell's value.</summary>
    private Outcome? ServeDoorbell(ref GeneralRegisters regs, bool resumed)
    {
        if (!_abi.Dispatch(ref regs))
        {
            return FromStop();
        }

        if (_pending == ExitKind.Doorbell)
        {
            BitConverter.TryWriteBytes(_vcpu.ExitData, regs.Rax);
        }

        if (resumed)
        {
            // After a restore the registers come from the snapshot; the pending read (if any) ends the same way.
            regs.Rip = GuestLayout.TrampolineReturn;
            _vcpu.SetGeneralRegisters(regs);
        }

        return null;
    }

    /// <summary>Physical address of the frame the CPU pushed on the exception stack (error code first, where there is one).</summary>
    private static GuestAddress FrameAddress(int vector) =>
        new(GuestLayout.StackPhysical + GuestLayout.PageSize - (Supervisor.HasErrorCode(vector) ? 48UL : 40UL));

    /// <summary>A #UD at CPL 3 whose instruction is <c>syscall</c> (0F 05) is a system call (CPUs that honour EFER.SCE = 0).</summary>
    private bool IsSyscallUd()
    {
        var frame = FrameAddress(GuestLayout.InvalidOpcodeVector);
        ulong rip = _memory.Read<ulong>(frame);
        ulong cs = _memory.Read<ulong>(frame + 8);
        Span<byte> insn = stackalloc byte[2];
        return (cs & 3) == 3 && _space.TryReadUser(rip, insn, _memory) && insn[0] == 0x0F && insn[1] == 0x05;
    }

    /// <summary>Serves a system call that arrived as #UD: steps the frame past <c>syscall</c> and resumes at the stub's <c>iretq</c>.</summary>
    private Outcome? ServeUd(ref GeneralRegisters regs, bool resumed)
    {
        _ = resumed;
        var frame = FrameAddress(GuestLayout.InvalidOpcodeVector);
        ulong userRip = _memory.Read<ulong>(frame);
        ulong userFlags = _memory.Read<ulong>(frame + 16);
        if (!_abi.Dispatch(ref regs))
        {
            return FromStop();
        }

        // What Linux's SYSCALL path leaves behind: RCX = return address, R11 = RFLAGS.
        regs.Rcx = userRip + 2;
        regs.R11 = userFlags;
        _memory.Write(frame, userRip + 2);
        regs.Rip = GuestLayout.ResumeAddress;
        _vcpu.SetGeneralRegisters(regs);
        return null;
    }

    private Outcome FromStop()
    {
        var stop = _abi.Stop!;
        return new Outcome(stop.Status, stop.ExitCode, stop.Signal, stop.Message, null);
    }

    private Outcome? OnInterrupted(long deadline, CancellationToken cancellationToken)
    {
        if (cancellationToken.IsCancellationRequested)
        {
            return Stopped(SandboxStatus.Cancelled, "The run was cancelled.");
        }

        return Stopwatch.GetTimestamp() >= deadline
            ? Stopped(SandboxStatus.TimeLimitExceeded, $"The program ran longer than {_config.TimeLimit.TotalMilliseconds} ms.")
            : null;
    }

    private Outcome? OnException(int vector)
    {
        if (vector == GuestLayout.InvalidOpcodeVector && _pending == ExitKind.Stub && IsSyscallUd())
        {
            var regs = _vcpu.GetGeneralRegisters();
            if (_config.SnapshotReset && _snapshot is null && _abi.IsReadyPoint(regs))
            {
                _snapshot = TakeSnapshot(regs, ExitKind.Stub);
            }

            return ServeUd(ref regs, resumed: false);
        }

        // The stub runs on the IST stack, whose top is fixed: read the frame from there, not from a register.
        bool hasError = Supervisor.HasErrorCode(vector);
        var frame = new ulong[hasError ? 6 : 5];
        _memory.Read(FrameAddress(vector), MemoryMarshal.AsBytes(frame.AsSpan()));
        ulong error = hasError ? frame[0] : 0;
        ulong rip = frame[hasError ? 1 : 0];
        ulong cs = frame[hasError ? 2 : 1];
        ulong cr2 = vector == 14 ? _vcpu.GetSpecialRegisters().Cr2 : 0;
        var bytes = new List<byte>(15);
        var one = new byte[1];
        for (ulong i = 0; i < 15 && _space.TryReadUser(rip + i, one, _memory); i++)
        {
            bytes.Add(one[0]);
        }

        string name = vector < VectorNames.Length ? VectorNames[vector] : $"#{vector}";
        var fault = new SandboxFault(vector, name, error, rip, cr2, bytes.ToArray());
        int signal = vector switch
        {
            0 or 16 or 19 => 8, // SIGFPE
            1 or 3 => 5, // SIGTRAP
            6 => 4, // SIGILL
            17 => 7, // SIGBUS
            _ => 11, // SIGSEGV
        };
        string where = (cs & 3) == 3 ? "" : " (in supervisor code)";

        return new Outcome(SandboxStatus.GuestFault, -1, signal, $"The program raised {name}{where}: {fault}", fault);
    }

    // ---- snapshot ------------------------------------------------------------------------

    private sealed record Snapshot(
        ExitKind Kind, GeneralRegisters Registers, SpecialRegisters Special, FpuState Fpu, int[] PageSlots, byte[] Pages,
        ArenaAllocator.State Arena, AbiState Abi);

    private Snapshot TakeSnapshot(in GeneralRegisters regs, ExitKind kind)
    {
        var special = _vcpu.GetSpecialRegisters();
        var fpu = _vcpu.GetFpuState();
        int pageCount = (int)(_memory.TotalSize / GuestLayout.PageSize);
        var slots = new int[pageCount];
        var data = new MemoryStream();
        int next = 0;
        for (int p = 0; p < pageCount; p++)
        {
            var page = _memory.GetSpan(new GuestAddress((ulong)p * GuestLayout.PageSize), (int)GuestLayout.PageSize, forWrite: false);
            if (page.IndexOfAnyExcept((byte)0) < 0)
            {
                slots[p] = -1;
                continue;
            }

            slots[p] = next++;
            data.Write(page);
        }

        // Start the dirty log from here: only pages written after this point need restoring.
        CollectDirty();
        return new Snapshot(kind, regs, special, fpu, slots, data.ToArray(), _arena.Save(), _abi.SaveState());
    }

    private ulong[] CollectDirty()
    {
        var bitmap = new ulong[(((int)(_memory.TotalSize / GuestLayout.PageSize)) + 63) / 64];
        if (_partition is IDirtyPageLog log)
        {
            log.CollectDirtyPages(RegionIndex, bitmap);
        }
        else
        {
            bitmap.AsSpan().Fill(ulong.MaxValue);
        }

        return bitmap;
    }

    /// <summary>
    /// Brings the vCPU into an exit of the snapshot's kind, so that whatever the backend does to complete the
    /// pending exit agrees with the restored state. Runs a few guest instructions; only needed after a run
    /// that ended in the other kind of exit.
    /// </summary>
    private bool Converge(ExitKind target)
    {
        if (_pending == ExitKind.None || _pending == target)
        {
            return true;
        }

        var regs = _vcpu.GetGeneralRegisters();
        if (target == ExitKind.Doorbell)
        {
            // In an exception stub: make its iretq return to CPL 3 at the trampoline, whose doorbell read exits.
            if (regs.Rsp < GuestLayout.SupervisorBase + GuestLayout.StackPhysical || regs.Rsp > GuestLayout.ExceptionStackTop - 40)
            {
                return false;
            }

            Span<ulong> iret = [GuestLayout.TrampolineAddress, GuestLayout.UserCode, Supervisor.InitialUserFlags, _arena.StackTop - 64, GuestLayout.UserData];
            _memory.Write(new GuestAddress(regs.Rsp - GuestLayout.SupervisorBase), MemoryMarshal.AsBytes(iret));
            regs.Rip = GuestLayout.ResumeAddress;
        }
        else
        {
            // At the doorbell: let the trampoline's jmp rcx land in supervisor memory, whose #PF exits through a stub.
            BitConverter.TryWriteBytes(_vcpu.ExitData, 0UL);
            regs.Rcx = GuestLayout.SupervisorBase + GuestLayout.CodePhysical;
            regs.Rip = GuestLayout.TrampolineReturn;
        }

        _vcpu.SetGeneralRegisters(regs);
        var exit = _vcpu.Run();
        bool ok = target == ExitKind.Doorbell
            ? exit.Reason == VcpuExitReason.Mmio && exit.Address.Value == GuestLayout.DoorbellPhysical
            : exit.Reason == VcpuExitReason.PortIo && exit.Port >= GuestLayout.ExceptionPortBase;
        _pending = ok ? target : ExitKind.None;
        return ok;
    }

    private int Restore(Snapshot s, out Outcome? failure)
    {
        failure = null;
        if (!Converge(s.Kind))
        {
            _broken = true;
            failure = Stopped(SandboxStatus.BackendFailure, "The vCPU could not be brought back to the snapshot's state; the sandbox will be rebuilt.");
            return 0;
        }

        var bitmap = CollectDirty();
        int restored = 0;
        int pageCount = s.PageSlots.Length;
        for (int w = 0; w < bitmap.Length; w++)
        {
            ulong bits = bitmap[w];
            while (bits != 0)
            {
                int p = (w * 64) + System.Numerics.BitOperations.TrailingZeroCount(bits);
                bits &= bits - 1;
                if (p >= pageCount)
                {
                    break;
                }

                var target = _memory.GetSpan(new GuestAddress((ulong)p * GuestLayout.PageSize), (int)GuestLayout.PageSize, forWrite: _restoreMarksWrites);
                int slot = s.PageSlots[p];
                if (slot < 0)
                {
                    target.Clear();
                }
                else
                {
                    s.Pages.AsSpan(slot * (int)GuestLayout.PageSize, (int)GuestLayout.PageSize).CopyTo(target);
                }

                restored++;
            }
        }

        if (_restoreMarksWrites)
        {
            CollectDirty();
        }

        _arena.Restore(s.Arena);
        _abi.RestoreState(s.Abi);
        var current = _vcpu.GetSpecialRegisters();
        if (!SameSpecial(current, s.Special))
        {
            _vcpu.SetSpecialRegisters(s.Special);
        }

        _vcpu.SetFpuState(s.Fpu);
        if (_fsBaseByMsr)
        {
            _vcpu.SetMsrs([new MsrEntry(MsrIndex.FsBase, s.Special.Fs.Base)]);
        }

        return restored;
    }

    private static bool SameSpecial(in SpecialRegisters a, in SpecialRegisters b) =>
        SameSegment(a.Cs, b.Cs) && SameSegment(a.Ds, b.Ds) && SameSegment(a.Es, b.Es) && SameSegment(a.Fs, b.Fs) &&
        SameSegment(a.Gs, b.Gs) && SameSegment(a.Ss, b.Ss) && a.Cr0 == b.Cr0 && a.Cr3 == b.Cr3 && a.Cr4 == b.Cr4 && a.Efer == b.Efer;

    private static bool SameSegment(in SegmentRegister a, in SegmentRegister b) =>
        a.Base == b.Base && a.Selector == b.Selector && a.Limit == b.Limit && a.Type == b.Type && a.Dpl == b.Dpl && a.Long == b.Long && a.Present == b.Present;

    /// <summary>Releases the vCPU, the partition and guest memory.</summary>
    public void Dispose()
    {
        _vcpu.Dispose();
        _partition.Dispose();
        _memory.Dispose();
    }
}
