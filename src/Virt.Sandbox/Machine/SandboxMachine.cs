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
    public bool CanRunAgain => _snapshot is not null || !_dirty;

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
        bool resumeWithSyscall = false;
        GeneralRegisters regs = default;
        if (_snapshot is not null)
        {
            restored = Restore(_snapshot);
            regs = _snapshot.Registers;
            resumeWithSyscall = true;
        }

        _dirty = true;
        if (_vcpu is IInstructionCounting counting)
        {
            counting.InstructionBudget = _config.InstructionLimit;
        }

        long deadline = Stopwatch.GetTimestamp() + (long)(_config.TimeLimit.TotalSeconds * Stopwatch.Frequency);
        using var timer = new Timer(static s => ((IVirtualCpu)s!).RequestExit(), _vcpu, _config.TimeLimit, Timeout.InfiniteTimeSpan);
        using var registration = cancellationToken.Register(static s => ((IVirtualCpu)s!).RequestExit(), _vcpu);
        var outcome = resumeWithSyscall ? HandleSyscall(ref regs) : null;
        while (outcome is null)
        {
            var exit = _vcpu.Run();
            outcome = exit.Reason switch
            {
                VcpuExitReason.PortIo when exit.Port >= GuestLayout.ExceptionPortBase && exit.Port < GuestLayout.ExceptionPortBase + GuestLayout.ExceptionVectors =>
                    OnException(exit.Port - GuestLayout.ExceptionPortBase),
                VcpuExitReason.Interrupted => OnInterrupted(deadline, cancellationToken),
                VcpuExitReason.BudgetExhausted => Stopped(SandboxStatus.TimeLimitExceeded, $"The program used its budget of {_config.InstructionLimit} instructions."),
                VcpuExitReason.Exception => OnException((int)exit.Value),
                VcpuExitReason.Shutdown => Stopped(SandboxStatus.GuestFault, $"The guest shut down (triple fault): {exit.Fault}"),
                VcpuExitReason.InternalError or VcpuExitReason.FailEntry => Stopped(SandboxStatus.BackendFailure, $"The backend stopped the guest: {exit}"),
                _ => Stopped(SandboxStatus.ForbiddenOperation, $"Unexpected exit from the guest: {exit}"),
            };
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

    /// <summary>Physical address of the frame the CPU pushed on the exception stack (error code first, where there is one).</summary>
    private static GuestAddress FrameAddress(int vector) =>
        new(GuestLayout.StackPhysical + GuestLayout.PageSize - (Supervisor.HasErrorCode(vector) ? 48UL : 40UL));

    /// <summary>A #UD raised by the trampoline's <c>ud2</c> is a system call.</summary>
    private bool IsSyscall() => _memory.Read<ulong>(FrameAddress(GuestLayout.InvalidOpcodeVector)) == GuestLayout.TrampolineAddress;

    private Outcome? OnSyscall()
    {
        var regs = _vcpu.GetGeneralRegisters();
        if (_config.SnapshotReset && _snapshot is null && _abi.IsReadyPoint(regs))
        {
            _snapshot = TakeSnapshot(regs);
        }

        return HandleSyscall(ref regs);
    }

    private Outcome? HandleSyscall(ref GeneralRegisters regs)
    {
        // SYSCALL left the return address in RCX and the program's flags in R11. A program can also
        // jump to the trampoline with any RCX/R11, so both are checked before they reach iretq at CPL 0.
        ulong returnRip = regs.Rcx;
        if (!GuestLayout.IsUserCanonical(returnRip))
        {
            return Stopped(SandboxStatus.ForbiddenOperation, $"The system-call trampoline was entered with return address 0x{returnRip:x}, outside user space.");
        }

        bool go = _abi.Dispatch(ref regs);
        if (!go)
        {
            var stop = _abi.Stop!;
            return new Outcome(stop.Status, stop.ExitCode, stop.Signal, stop.Message, null);
        }

        // The frame becomes a return to CPL 3: RIP = RCX, user CS/SS, sanitised flags, the same RSP.
        var frame = FrameAddress(GuestLayout.InvalidOpcodeVector);
        ulong userRsp = _memory.Read<ulong>(frame + 24);
        Span<ulong> iret = [returnRip, GuestLayout.UserCode, (regs.R11 & Supervisor.UserFlagsMask) | Supervisor.InitialUserFlags, userRsp, GuestLayout.UserData];
        _memory.Write(frame, MemoryMarshal.AsBytes(iret));

        // Resume at the shared iretq whether or not the backend already stepped past the out.
        regs.Rip = GuestLayout.ResumeAddress;
        _vcpu.SetGeneralRegisters(regs);
        return null;
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
        if (vector == GuestLayout.InvalidOpcodeVector && IsSyscall())
        {
            return OnSyscall();
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
        if (Environment.GetEnvironmentVariable("VIRT_SANDBOX_DEBUG") == "1")
        {
            Span<MsrEntry> m = [new(MsrIndex.Star, 0), new(MsrIndex.Lstar, 0), new(MsrIndex.Fmask, 0)];
            _vcpu.GetMsrs(m);
            Console.Error.WriteLine($"frame=[{string.Join(",", frame.Select(x => x.ToString("x", System.Globalization.CultureInfo.InvariantCulture)))}] star={m[0].Value:x} lstar={m[1].Value:x} efer={m[2].Value:x} regs={_vcpu.GetGeneralRegisters()}");
        }

        return new Outcome(SandboxStatus.GuestFault, -1, signal, $"The program raised {name}{where}: {fault}", fault);
    }

    // ---- snapshot ------------------------------------------------------------------------

    private sealed record Snapshot(
        GeneralRegisters Registers, SpecialRegisters Special, FpuState Fpu, int[] PageSlots, byte[] Pages,
        ArenaAllocator.State Arena, AbiState Abi);

    private Snapshot TakeSnapshot(in GeneralRegisters regs)
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
        return new Snapshot(regs, special, fpu, slots, data.ToArray(), _arena.Save(), _abi.SaveState());
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

    private int Restore(Snapshot s)
    {
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
