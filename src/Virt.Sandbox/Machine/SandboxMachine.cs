using System.Diagnostics;
using System.Runtime.InteropServices;
using Virt.Cpu;
using Virt.Memory;
using Virt.Sandbox.Linux;
using Virt.Sandbox.Loader;
using Virt.X86;

namespace Virt.Sandbox.Machine;

/// <summary>
/// One micro-VM running one program: guest memory, a partition with one vCPU, the address space and
/// the ABI layer, plus the snapshot it resets to. Not thread-safe: every method runs on the owning
/// sandbox's vCPU thread.
/// </summary>
internal sealed class SandboxMachine : IDisposable
{
    private const int RegionIndex = 0;
    private readonly SandboxConfiguration _config;
    private readonly GuestMemory _memory;
    private readonly IPartition _partition;
    private readonly IVirtualCpu _vcpu;
    private readonly AddressSpace _space;
    private readonly ArenaAllocator _arena;
    private readonly LinuxAbi _abi;
    private readonly ThreadContexts _threads;
    private readonly ElfImage _image;
    private readonly bool _fsBaseByMsr;
    private readonly bool _restoreMarksWrites;
    private readonly uint[] _savedMsrs = [];
    private readonly CpuidEntry[] _cpuid = [];
    private bool _cpuidFaulting;
    private bool _debugExceptionSinceSnapshot;
    private bool _userModeIsHostUserMode;
    private Snapshot? _snapshot;
    private bool _dirty;

    private SandboxMachine(SandboxConfiguration config, ElfImage image, IHypervisor hypervisor)
    {
        _config = config;
        _memory = GuestMemory.CreateRam(config.MemoryBytes);
        try
        {
            _space = AddressSpace.Build(_memory, image, (ulong)config.StackBytes, MinimumHeapBytes);
            Supervisor.Install(_memory);
            _arena = new ArenaAllocator(_memory, _space.ArenaPhysical, _space.ArenaPages);
            _space.AttachRegion(_memory, _arena);
            // Pages that are both writable and executable (an executable stack, a W+X segment, the arena of a dynamically
            // linked program) may hold code that a reset rewrites: the backend must hear of those writes.
            _restoreMarksWrites = image.ExecutableStack || image.InterpreterPath is not null ||
                image.Segments.Any(s => (s.Flags & (ElfSegmentFlags.Write | ElfSegmentFlags.Execute)) == (ElfSegmentFlags.Write | ElfSegmentFlags.Execute));
            _partition = hypervisor.CreatePartition(_memory, new PartitionOptions
            {
                TrackDirtyPages = config.SnapshotReset,
                MaskedCpuidFeatures = HiddenCpuidFeatures,
            });
            try
            {
                _vcpu = _partition.CreateVcpu(0);
                _fsBaseByMsr = _partition.SupportedMsrs.Contains(MsrIndex.FsBase);
                _savedMsrs = [.. SavedMsrs.Where(_partition.SupportedMsrs.Contains)];
                _cpuid = CpuidPolicy(_partition.SupportedCpuid);
                _abi = new LinuxAbi(config, _memory, _space, _arena, SetFsBase);
                _image = image;
                _threads = new ThreadContexts(_vcpu, _memory, _abi, SetFsBase, new ProcessMemory(_memory, _space, _arena, image), StartImage);
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

    /// <summary>Smallest heap a program gets besides its stack.</summary>
    private const ulong MinimumHeapBytes = 64 * 1024;

    /// <summary>
    /// CPUID features the program never sees: XSAVE and the vector extensions whose state it would need (their
    /// registers are outside the legacy FXSAVE state the sandbox promises), and protection keys.
    /// </summary>
    private static readonly CpuidFeature[] HiddenCpuidFeatures =
    [
        CpuidFeature.Xsave, CpuidFeature.Avx, CpuidFeature.Avx2, CpuidFeature.Avx512F,
        new(7, 0, CpuidRegister.Ecx, 3), // PKU
    ];

    /// <summary>
    /// MSRs a program can write at CPL 3 (WRFSBASE/WRGSBASE, where the backend lets user code use them); the reset
    /// writes them back where the backend has them as MSRs. The rest (KERNEL_GS_BASE, TSC_AUX, the SYSCALL and
    /// SYSENTER MSRs, MISC_FEATURES_ENABLES) only CPL 0 code can change, and the sandbox's own CPL 0 code never does:
    /// they are set once when the machine starts.
    /// </summary>
    private static readonly uint[] SavedMsrs = [MsrIndex.FsBase, MsrIndex.GsBase];

    /// <summary>Whether the machine can serve another run (it has a snapshot, or has not run yet).</summary>
    public bool CanRunAgain => !_broken && (_snapshot is not null || !_dirty);

    /// <summary>Whether a snapshot was taken at the program's ready point.</summary>
    public bool HasSnapshot => _snapshot is not null;

    /// <summary>The hypervisor's name.</summary>
    public string BackendName => _partition.Hypervisor.Name;

    /// <summary>What the backend enforces on this host, as far as the machine has seen.</summary>
    public SandboxIsolation Isolation => new()
    {
        Backend = BackendName,
        CpuidPolicyEnforced = _cpuidFaulting || !_userModeIsHostUserMode,
        CpuidFaulting = _cpuidFaulting,
        UserModeRunsOnHost = _userModeIsHostUserMode,
        HiddenStateReachable = _userModeIsHostUserMode ? HostUserComponents() & ~(XsaveComponents.X87 | XsaveComponents.Sse) : XsaveComponents.None,
    };

    /// <summary>
    /// The XSAVE components this process's own user-mode code can use (the kernel's XCR0 as .NET sees it): on a KVM
    /// that runs CPL 3 guest code as host user code, the program can use them too, whatever CPUID says.
    /// </summary>
    private static XsaveComponents HostUserComponents()
    {
        var c = XsaveComponents.X87 | XsaveComponents.Sse;
        if (System.Runtime.Intrinsics.X86.Avx.IsSupported)
        {
            c |= XsaveComponents.Avx;
        }

        if (System.Runtime.Intrinsics.X86.Avx512F.IsSupported)
        {
            c |= XsaveComponents.Avx512OpMask | XsaveComponents.Avx512ZmmHigh256 | XsaveComponents.Avx512HighZmm;
        }

        if (HostHasOsPke.Value)
        {
            c |= XsaveComponents.Pkru;
        }

        return c;
    }

    private static readonly Lazy<bool> HostHasOsPke = new(() =>
    {
        try
        {
            return File.Exists("/proc/cpuinfo") && File.ReadLines("/proc/cpuinfo")
                .Any(l => l.StartsWith("flags", StringComparison.Ordinal) && l.Contains(" ospke", StringComparison.Ordinal));
        }
        catch (IOException)
        {
            return false;
        }
        catch (UnauthorizedAccessException)
        {
            return false;
        }
    });

    /// <summary>
    /// The CPUID answers the program gets: the backend's leaves without the hidden features, with OSXSAVE and
    /// OSPKE clear (CR4 has neither) and no XSAVE enumeration leaf. MMX is always reported: it is part of the x86-64
    /// psABI baseline, and glibc's loader refuses libraries marked for that baseline (Debian's libc.so.6) on a CPU
    /// without it. Both backends implement MMX (the interpreter's MMn registers alias its x87 registers, as on hardware).
    /// </summary>
    private static CpuidEntry[] CpuidPolicy(IReadOnlyList<CpuidEntry> supported) =>
    [
        .. supported.Where(e => e.Function != 0xD).Select(e => e.Function switch
        {
            1 => e with { Ecx = e.Ecx & ~(1u << 27), Edx = e.Edx | (1u << 23) },
            7 when e.Index == 0 => e with { Ecx = e.Ecx & ~(1u << 4) },
            _ => e,
        }),
    ];

    /// <summary>Creates the VM and loads <paramref name="image"/> (throws for a bad configuration or a refusing backend).</summary>
    public static SandboxMachine Create(SandboxConfiguration config, ElfImage image, IHypervisor hypervisor) => new(config, image, hypervisor);

    private void StartProgram(ElfImage image)
    {
        _vcpu.SetCpuid(_cpuid);
        var argv = new List<string> { _config.ExecutablePath };
        argv.AddRange(_config.Arguments);
        ulong entry = LoadInterpreter(image, out ulong interpreterBase);
        ulong rsp = WriteInitialStack(image, argv, _config.Environment, _config.ExecutablePath, interpreterBase);
        var sregs = Supervisor.UserStart(_vcpu.GetSpecialRegisters(), _space.Cr3);
        _vcpu.SetSpecialRegisters(sregs);
        _vcpu.SetMsrs(Supervisor.SyscallMsrs());
        EnableCpuidFaulting();
        // The whole XSAVE image, not just the FXSAVE part: it is what the backend loads into the processor, and on a
        // KVM that runs user code with the host's XCR0 it also clears vector state that CPUID does not admit to.
        ulong xcr0 = _vcpu.GetXsaveState().Xcr0 & (ulong)(XsaveComponents.X87 | XsaveComponents.Sse);
        _initialXsave = XsaveState.FromFpu(FpuState.Initial, xcr0);
        _vcpu.SetXsaveState(_initialXsave);
        _vcpu.SetDebugRegisters(DebugRegisters.Initial);
        _vcpu.SetGeneralRegisters(new GeneralRegisters { Rip = entry, Rsp = rsp, Rflags = Supervisor.InitialUserFlags });
    }

    /// <summary>
    /// For a dynamically linked program, loads its interpreter into the (fresh) arena and returns the interpreter's entry
    /// point and base; for a static one, the program's entry point and base 0.
    /// </summary>
    private ulong LoadInterpreter(ElfImage image, out ulong interpreterBase)
    {
        interpreterBase = 0;
        if (image.InterpreterPath is null || _config.Interpreter is not { } interpreter)
        {
            return image.Entry;
        }

        interpreterBase = InterpreterLoader.Load(interpreter, _arena, _space, _memory, _config.MemoryBytes);
        return interpreterBase + interpreter.Entry;
    }

    private XsaveState? _initialXsave;

    /// <summary>execve: a new initial stack for a fresh image of the executable (the memory was reloaded).</summary>
    private (ulong Entry, ulong Rsp, XsaveState Xsave) StartImage(IReadOnlyList<string> arguments, IReadOnlyList<string> environment, string path)
    {
        ulong entry = LoadInterpreter(_image, out ulong interpreterBase);
        return (entry, WriteInitialStack(_image, arguments, environment, path, interpreterBase), _initialXsave!);
    }

    /// <summary>Writes the psABI entry stack (argc, argv, envp, auxv, strings) at the top of the stack; returns RSP.</summary>
    private ulong WriteInitialStack(ElfImage image, IReadOnlyList<string> argv, IReadOnlyList<string> environment, string executablePath, ulong interpreterBase)
    {
        uint hwcap = _cpuid.FirstOrDefault(e => e.Function == 1).Edx;
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

        var aux = new List<(ulong, ulong)>
        {
            (AuxKey.Phdr, image.ProgramHeaderAddress), (AuxKey.Phent, 56), (AuxKey.Phnum, (ulong)image.ProgramHeaderCount),
            (AuxKey.Pagesz, GuestLayout.PageSize), (AuxKey.Base, interpreterBase), (AuxKey.Flags, 0), (AuxKey.Entry, image.Entry),
            (AuxKey.Uid, 1000), (AuxKey.Euid, 1000), (AuxKey.Gid, 1000), (AuxKey.Egid, 1000), (AuxKey.Hwcap, hwcap),
            (AuxKey.Hwcap2, 0), (AuxKey.Clktck, 100), (AuxKey.Secure, 0), (AuxKey.SysinfoEhdr, GuestLayout.VdsoAddress),
        };
        var stack = InitialStack.Build(_space.StackTop, [.. argv], [.. environment], executablePath, random, aux, _config.StackBytes);
        if (!_space.TryWriteUser(stack.Rsp, stack.Bytes, _memory))
        {
            throw new InvalidOperationException("The initial stack is not writable user memory.");
        }

        return stack.Rsp;
    }

    /// <summary>
    /// Turns on CPUID faulting where the backend offers it (MSR_PLATFORM_INFO bit 31): CPUID at CPL 3 then raises
    /// #GP, and the host answers from the sandbox's policy. That is the only way the policy holds on a KVM that runs
    /// user code natively with the host's CPUID (PVM); elsewhere it costs one exit per CPUID, which programs run a
    /// few dozen times while they start.
    /// </summary>
    private void EnableCpuidFaulting()
    {
        if (!_partition.SupportedMsrs.Contains(MsrIndex.PlatformInfo) || !_partition.SupportedMsrs.Contains(MsrIndex.MiscFeaturesEnables))
        {
            return;
        }

        Span<MsrEntry> info = [new MsrEntry(MsrIndex.PlatformInfo, 0)];
        try
        {
            _vcpu.GetMsrs(info);
            if ((info[0].Value & (1UL << 31)) == 0)
            {
                return;
            }

            _vcpu.SetMsrs([new MsrEntry(MsrIndex.MiscFeaturesEnables, 1)]);
            _cpuidFaulting = true;
        }
        catch (ArgumentException)
        {
            // The backend lists the MSRs but refuses them for this vCPU: CPUID keeps the backend's own answers.
        }
        catch (HypervisorException)
        {
        }
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
        // The kick repeats after the limit: one that lands while the host serves a system call, or just before the
        // deadline by the stopwatch, must not leave a spinning program running until the watchdog gives up.
        using var timer = new Timer(static s => ((IVirtualCpu)s!).RequestExit(), _vcpu, _config.TimeLimit, TimeSpan.FromMilliseconds(50));
        using var registration = cancellationToken.Register(static s => ((IVirtualCpu)s!).RequestExit(), _vcpu);
        if (outcome is null && _snapshot is not null)
        {
            // The restored vCPU sits at the ready point's system call: serve it with the new input.
            var regs = _snapshot.Registers;
            outcome = _snapshot.Kind == ExitKind.Doorbell ? ResumeAfterDoorbell(ref regs) : ServeUd(ref regs, resumed: true);
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
        if (_arena.LimitReached)
        {
            string refused = $"A memory request was refused earlier in the run (limit {_config.MemoryBytes} bytes).";
            if ((status == SandboxStatus.Exited && outcome.ExitCode != 0) || status == SandboxStatus.Signaled)
            {
                // A program that gives up after ENOMEM (exit status, abort) ran out of memory.
                message = $"{refused} Then the run ended: {outcome.Status} {outcome.Message ?? outcome.ExitCode.ToString(System.Globalization.CultureInfo.InvariantCulture)}";
                status = SandboxStatus.MemoryLimitExceeded;
            }
            else if (status == SandboxStatus.GuestFault)
            {
                // A fault is reported as the fault, whatever came before it; the refusal is context.
                message = $"{message} {refused}";
            }
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
            Usage = new SandboxResourceUsage(watch.Elapsed, instructions, ((long)_arena.PeakPages + (long)_space.StackPages) * (long)GuestLayout.PageSize, _abi.SystemCalls, restored),
            UnsupportedSystemCalls = new Dictionary<string, int>(_abi.Unsupported),
            MemoryLimitReached = _arena.LimitReached,
            Isolation = Isolation,
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

                    // SYSCALL ignored EFER.SCE without leaving CPL 3: the backend runs user code as host user code.
                    _userModeIsHostUserMode = true;
                }

                if (_config.SnapshotReset && _snapshot is null && _abi.IsReadyPoint(regs))
                {
                    _snapshot = TakeSnapshot(regs, ExitKind.Doorbell);
                }

                return ServeDoorbell(ref regs);
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
                return OnException((int)exit.Value, viaStub: false);
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
    private Outcome? ServeDoorbell(ref GeneralRegisters regs)
    {
        ulong nr = regs.Rax;
        if (!_abi.Dispatch(ref regs))
        {
            return FromStop();
        }

        BitConverter.TryWriteBytes(_vcpu.ExitData, regs.Rax);
        if (!_threads.Pending && _abi.HasSignalWork)
        {
            // SYSCALL left the return address in RCX and the flags in R11; the trampoline runs at CPL 3 on the user stack.
            var user = regs;
            user.Rip = regs.Rcx;
            user.Rflags = regs.R11;
            return DeliverSignals(user, nr);
        }

        return _threads.Pending ? AfterCall(regs, nr) : null;
    }

    /// <summary>
    /// After a call: rt_sigreturn's context or a signal handler's frame replaces where the call returns; a signal whose
    /// default action ends the process stops the run (or hands the vCPU to another process).
    /// </summary>
    private Outcome? DeliverSignals(in GeneralRegisters user, ulong nr)
    {
        var change = _abi.AfterSyscall(user, _vcpu.GetXsaveState);
        if (_abi.Stop is not null)
        {
            return FromStop();
        }

        if (change is { } c)
        {
            string? failure = _threads.LoadUser(c.Registers, c.Xsave, () => Converge(ExitKind.Stub));
            if (failure is not null)
            {
                _broken = true;
                return Stopped(SandboxStatus.BackendFailure, failure);
            }
        }

        return _threads.Pending ? AfterCall(user, nr) : null;
    }

    /// <summary>
    /// Serves the snapshot's pending system call after a restore and returns to the program after its SYSCALL (RIP
    /// from RCX, RFLAGS from R11, where SYSCALL saved them). The vCPU is never resumed by completing a doorbell read
    /// here: a KVM completes a pending read by writing back the flags it held when that read exited, which would be an
    /// earlier call's. It resumes through a stub's <c>iretq</c>, whose frame the host writes, or, with no exit pending,
    /// from registers set directly.
    /// </summary>
    private Outcome? ResumeAfterDoorbell(ref GeneralRegisters regs)
    {
        if (!_abi.Dispatch(ref regs))
        {
            return FromStop();
        }

        ulong userFlags = (regs.R11 & Supervisor.UserFlagsMask) | Supervisor.InitialUserFlags;
        if (_pending == ExitKind.Stub)
        {
            Span<ulong> iret = [regs.Rcx, GuestLayout.UserCode, userFlags, regs.Rsp, GuestLayout.UserData];
            _memory.Write(new GuestAddress(ResumeFrame - GuestLayout.SupervisorBase), MemoryMarshal.AsBytes(iret));
            var kernel = regs;
            kernel.Rsp = ResumeFrame;
            kernel.Rip = GuestLayout.ResumeAddress;
            kernel.Rflags = Rflags.Fixed;
            _vcpu.SetGeneralRegisters(kernel);
        }
        else
        {
            regs.Rip = regs.Rcx;
            regs.Rflags = userFlags;
            _vcpu.SetGeneralRegisters(regs);
        }

        return null;
    }

    /// <summary>Where a resume through a stub's <c>iretq</c> puts its five-word frame: the top of the exception stack.</summary>
    private const ulong ResumeFrame = ThreadContexts.ResumeFrame;

    /// <summary>
    /// When the last run ended in a doorbell read, completes that read into an exception stub (one guest exit), so the
    /// next restore resumes through the stub's <c>iretq</c>. Called between calls, off the caller's critical path;
    /// <see cref="Run"/> does it itself when it was not done.
    /// </summary>
    public void Park()
    {
        if (_pending != ExitKind.Doorbell || _snapshot is null || _broken)
        {
            return;
        }

        try
        {
            _broken = !Converge(ExitKind.Stub);
        }
        catch (HypervisorException)
        {
            // The next call rebuilds the machine.
            _broken = true;
        }
    }

    /// <summary>Physical address of the frame the CPU pushed on the exception stack (error code first, where there is one).</summary>
    private static GuestAddress FrameAddress(int vector) =>
        new(GuestLayout.StackPhysical + GuestLayout.PageSize - (ExceptionVector.HasErrorCode(vector) ? 48UL : 40UL));

    /// <summary>A #UD at CPL 3 whose instruction is <c>syscall</c> (0F 05) is a system call (CPUs that honour EFER.SCE = 0).</summary>
    private bool IsSyscallUd()
    {
        var frame = FrameAddress(GuestLayout.InvalidOpcodeVector);
        ulong rip = _memory.Read<ulong>(frame);
        ulong cs = _memory.Read<ulong>(frame + 8);
        Span<byte> insn = stackalloc byte[2];
        if ((cs & 3) == 3 && rip >= GuestLayout.VdsoAddress && rip < GuestLayout.VdsoAddress + Vdso.MaxSize - 1)
        {
            // The vDSO's own system calls: the host never translates that page for the program, but it knows its bytes.
            return Vdso.Image.Slice((int)(rip - GuestLayout.VdsoAddress), 2).SequenceEqual((ReadOnlySpan<byte>)[0x0F, 0x05]);
        }

        return (cs & 3) == 3 && _space.TryReadUser(rip, insn, _memory) && insn[0] == 0x0F && insn[1] == 0x05;
    }

    /// <summary>Serves a system call that arrived as #UD: steps the frame past <c>syscall</c> and resumes at the stub's <c>iretq</c>.</summary>
    private Outcome? ServeUd(ref GeneralRegisters regs, bool resumed)
    {
        _ = resumed;
        var frame = FrameAddress(GuestLayout.InvalidOpcodeVector);
        ulong userRip = _memory.Read<ulong>(frame);
        ulong userFlags = _memory.Read<ulong>(frame + 16);
        ulong nr = regs.Rax;
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
        if (!_threads.Pending && !_abi.HasSignalWork)
        {
            return null;
        }

        var user = regs;
        user.Rsp = _memory.Read<ulong>(frame + 24);
        if (!_threads.Pending)
        {
            user.Rip = userRip + 2;
            user.Rflags = userFlags;
            return DeliverSignals(user, nr);
        }

        return AfterCall(user, nr);
    }

    /// <summary>Makes the thread or the thread switch the last call asked for; a failure ends the run and marks the machine broken.</summary>
    private Outcome? AfterCall(in GeneralRegisters served, ulong nr)
    {
        string? failure = _threads.AfterCall(served, nr, () => Converge(ExitKind.Stub));
        if (failure is null)
        {
            return null;
        }

        _broken = true;
        return Stopped(SandboxStatus.BackendFailure, failure);
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

    /// <summary>A #GP at CPL 3 whose instruction is <c>cpuid</c> (0F A2) while CPUID faulting is on: the host answers it.</summary>
    private bool IsCpuidFault(out ulong frame)
    {
        frame = FrameAddress(ExceptionVector.GeneralProtection).Value;
        if (!_cpuidFaulting || _pending != ExitKind.Stub)
        {
            return false;
        }

        ulong error = _memory.Read<ulong>(new GuestAddress(frame));
        ulong rip = _memory.Read<ulong>(new GuestAddress(frame + 8));
        ulong cs = _memory.Read<ulong>(new GuestAddress(frame + 16));
        Span<byte> insn = stackalloc byte[2];
        return error == 0 && (cs & 3) == 3 && _space.TryReadUser(rip, insn, _memory) && insn[0] == 0x0F && insn[1] == 0xA2;
    }

    /// <summary>Answers a faulted CPUID from the sandbox's policy, steps the frame past it and resumes at the stub's <c>iretq</c>.</summary>
    private void ServeCpuid(ulong frame)
    {
        var regs = _vcpu.GetGeneralRegisters();
        uint leaf = (uint)regs.Rax, sub = (uint)regs.Rcx;
        var entry = default(CpuidEntry);
        foreach (var e in _cpuid)
        {
            if (e.Function == leaf && ((e.Flags & CpuidEntry.SignificantIndex) == 0 || e.Index == sub))
            {
                entry = e;
                break;
            }
        }

        uint ebx = leaf == 1 ? entry.Ebx & 0x00FF_FFFF : entry.Ebx; // one vCPU: initial APIC ID 0
        regs.Rax = entry.Eax;
        regs.Rbx = ebx;
        regs.Rcx = entry.Ecx;
        regs.Rdx = entry.Edx;
        regs.Rip = GuestLayout.ResumeAddress;
        // The stub ran with RSP at the error code #GP pushed; iretq wants the frame's RIP on top.
        regs.Rsp = GuestLayout.SupervisorBase + frame + 8;
        ulong userRip = _memory.Read<ulong>(new GuestAddress(frame + 8));
        _memory.Write(new GuestAddress(frame + 8), userRip + 2);
        _vcpu.SetGeneralRegisters(regs);
        _cpuidServed++;
    }

    private long _cpuidServed;

    /// <summary>CPUID instructions the host answered (CPUID faulting), since the machine was created.</summary>
    public long CpuidServed => _cpuidServed;

    private Outcome? OnException(int vector, bool viaStub = true)
    {
        if (vector == ExceptionVector.Debug)
        {
            // #DB sets bits in DR6: the next reset writes the debug registers back.
            _debugExceptionSinceSnapshot = true;
        }

        if (vector == ExceptionVector.GeneralProtection && IsCpuidFault(out ulong cpuidFrame))
        {
            ServeCpuid(cpuidFrame);
            return null;
        }

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
        bool hasError = ExceptionVector.HasErrorCode(vector);
        var frame = new ulong[hasError ? 6 : 5];
        _memory.Read(FrameAddress(vector), MemoryMarshal.AsBytes(frame.AsSpan()));
        ulong error = hasError ? frame[0] : 0;
        ulong rip = frame[hasError ? 1 : 0];
        ulong cs = frame[hasError ? 2 : 1];
        ulong cr2 = vector == ExceptionVector.PageFault ? _vcpu.GetSpecialRegisters().Cr2 : 0;
        var bytes = new List<byte>(15);
        var one = new byte[1];
        for (ulong i = 0; i < 15 && _space.TryReadUser(rip + i, one, _memory); i++)
        {
            bytes.Add(one[0]);
        }

        string name = ExceptionVector.Mnemonic(vector);
        var fault = new SandboxFault(vector, name, error, rip, cr2, bytes.ToArray());
        int signal = vector switch
        {
            ExceptionVector.DivideError or ExceptionVector.X87FloatingPoint or ExceptionVector.SimdFloatingPoint => 8, // SIGFPE
            ExceptionVector.Debug or ExceptionVector.Breakpoint => 5, // SIGTRAP
            ExceptionVector.InvalidOpcode => 4, // SIGILL
            ExceptionVector.AlignmentCheck => 7, // SIGBUS
            _ => 11, // SIGSEGV
        };
        if (viaStub && (cs & 3) == 3 && DeliverFault(vector, signal, frame, hasError, error, rip, cr2))
        {
            return null;
        }

        string where = (cs & 3) == 3 ? "" : " (in supervisor code)";
        if (vector == ExceptionVector.PageFault && (cs & 3) == 3 && _space.IsStackGuard(cr2))
        {
            return new Outcome(SandboxStatus.GuestFault, -1, signal,
                $"The program overflowed its {_config.StackBytes}-byte stack (SIGSEGV; raise it with WithStackSize): {fault}", fault);
        }

        return new Outcome(SandboxStatus.GuestFault, -1, signal, $"The program raised {name}{where}: {fault}", fault);
    }

    /// <summary>
    /// A fault at CPL 3 whose signal the program handles: the handler's frame is built on the user stack and the vCPU
    /// resumes in the handler. False when the signal takes its default action (the run ends with the fault).
    /// </summary>
    private bool DeliverFault(int vector, int signal, ulong[] frame, bool hasError, ulong error, ulong rip, ulong cr2)
    {
        int at = hasError ? 1 : 0;
        var user = _vcpu.GetGeneralRegisters();
        user.Rip = rip;
        user.Rflags = frame[at + 2];
        user.Rsp = frame[at + 3];
        // si_code and si_addr as Linux's traps.c and fault.c set them.
        (int code, ulong address) = vector switch
        {
            ExceptionVector.PageFault => ((error & 1) != 0 ? 2 : 1, cr2), // SEGV_ACCERR, SEGV_MAPERR
            ExceptionVector.DivideError => (1, rip), // FPE_INTDIV
            ExceptionVector.X87FloatingPoint or ExceptionVector.SimdFloatingPoint => (7, rip), // FPE_FLTINV
            ExceptionVector.InvalidOpcode => (2, rip), // ILL_ILLOPN
            ExceptionVector.AlignmentCheck => (1, 0UL), // BUS_ADRALN
            ExceptionVector.Debug => (2, rip), // TRAP_TRACE
            _ => (0x80, 0UL), // SI_KERNEL: #BP (int3), #GP and the rest
        };
        var change = _abi.DeliverFault(signal, code, address, user, _vcpu.GetXsaveState(), vector, error, cr2);
        if (change is not { } c)
        {
            return false;
        }

        string? failure = _threads.LoadUser(c.Registers, c.Xsave, () => Converge(ExitKind.Stub));
        if (failure is not null)
        {
            _broken = true;
            return false;
        }

        return true;
    }

    // ---- snapshot ------------------------------------------------------------------------

    /// <summary>
    /// The machine at the ready point: every piece of architectural state of the vCPU (general, segment,
    /// control and debug registers, the whole XSAVE image with XCR0, the MSRs in <see cref="SavedMsrs"/>),
    /// every non-zero page of RAM, and the host-side state.
    /// </summary>
    private sealed record Snapshot(
        ExitKind Kind, GeneralRegisters Registers, SpecialRegisters Special, XsaveState Xsave, DebugRegisters Debug, MsrEntry[] Msrs,
        int[] PageSlots, byte[] Pages, ArenaAllocator.State Arena, AbiState Abi);

    private Snapshot TakeSnapshot(in GeneralRegisters regs, ExitKind kind)
    {
        var special = _vcpu.GetSpecialRegisters();
        var xsave = _vcpu.GetXsaveState();
        var debug = _vcpu.GetDebugRegisters();
        var msrs = _savedMsrs.Select(i => new MsrEntry(i, 0)).ToArray();
        _vcpu.GetMsrs(msrs);
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
        return new Snapshot(kind, regs, special, xsave, debug, msrs, slots, data.ToArray(), _arena.Save(), _abi.SaveState());
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
    /// Brings a vCPU stopped in a doorbell read into an exception stub, so that whatever the backend does to complete
    /// the pending exit (a stub's <c>out</c> continues to the shared <c>iretq</c>) agrees with the state the host
    /// sets next. Every restore resumes from a stub or from no pending exit at all.
    /// </summary>
    private bool Converge(ExitKind target)
    {
        if (_pending != ExitKind.Doorbell || target != ExitKind.Stub)
        {
            return true;
        }

        // At the doorbell: let the trampoline's jmp rcx land in supervisor memory, whose #PF exits through a stub.
        var regs = _vcpu.GetGeneralRegisters();
        BitConverter.TryWriteBytes(_vcpu.ExitData, 0UL);
        regs.Rcx = GuestLayout.SupervisorBase + GuestLayout.CodePhysical;
        regs.Rip = GuestLayout.TrampolineReturn;
        _vcpu.SetGeneralRegisters(regs);
        var exit = _vcpu.Run();
        bool ok = exit.Reason == VcpuExitReason.PortIo && exit.Port >= GuestLayout.ExceptionPortBase;
        _pending = ok ? ExitKind.Stub : ExitKind.None;
        return ok;
    }

    private int Restore(Snapshot s, out Outcome? failure)
    {
        failure = null;
        if (!Converge(ExitKind.Stub))
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
        var special = s.Special;
        if (s.Kind == ExitKind.Doorbell && _pending == ExitKind.Stub)
        {
            // The program resumes through the stub's iretq, which loads CS and SS: until then the vCPU stays in the stub.
            special.Cs = current.Cs;
            special.Ss = current.Ss;
        }

        if (!SameSpecial(current, special))
        {
            _vcpu.SetSpecialRegisters(special);
        }

        // Every call starts from the same architectural state. What a program can change at CPL 3 is written back:
        // segment state (above), the whole XSAVE image (upper YMM halves, AVX-512 and PKRU included, which a KVM that
        // runs user code with the host's XCR0 lets a program change even though CPUID hides them), FS/GS base, and
        // DR6 after a debug exception. State only CPL 0 can change is the snapshot's already (each write costs an
        // ioctl, tens of microseconds on a nested KVM).
        _vcpu.SetXsaveState(s.Xsave);
        if (_debugExceptionSinceSnapshot)
        {
            _vcpu.SetDebugRegisters(s.Debug);
            _debugExceptionSinceSnapshot = false;
        }

        if (s.Msrs.Length > 0)
        {
            _vcpu.SetMsrs(s.Msrs);
        }

        return restored;
    }

    private static bool SameSpecial(in SpecialRegisters a, in SpecialRegisters b) =>
        SameSegment(a.Cs, b.Cs) && SameSegment(a.Ds, b.Ds) && SameSegment(a.Es, b.Es) && SameSegment(a.Fs, b.Fs) &&
        SameSegment(a.Gs, b.Gs) && SameSegment(a.Ss, b.Ss) && a.Cr0 == b.Cr0 && a.Cr2 == b.Cr2 && a.Cr3 == b.Cr3 && a.Cr4 == b.Cr4 &&
        a.Efer == b.Efer;

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
