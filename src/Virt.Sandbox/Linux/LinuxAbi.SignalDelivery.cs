using System.Buffers.Binary;
using Virt.Cpu;
using Virt.Sandbox.Machine;

namespace Virt.Sandbox.Linux;

/// <summary>What <c>siginfo_t</c> carries for one pending signal (signal(7), sigaction(2)).</summary>
/// <param name="Signal">si_signo.</param>
/// <param name="Code">si_code: SI_USER (0), SI_KERNEL (0x80), SI_TKILL (-6), or a fault's code.</param>
/// <param name="Word0">The 8 bytes at offset 16: si_pid | si_uid &lt;&lt; 32, or si_addr.</param>
/// <param name="Word1">The 8 bytes at offset 24: si_status for SIGCHLD.</param>
internal readonly record struct SignalInfo(int Signal, int Code, ulong Word0, ulong Word1)
{
    public const int Size = 128;

    public void Write(Span<byte> b)
    {
        b[..Size].Clear();
        BinaryPrimitives.WriteInt32LittleEndian(b, Signal);
        BinaryPrimitives.WriteInt32LittleEndian(b[8..], Code);
        BinaryPrimitives.WriteUInt64LittleEndian(b[16..], Word0);
        BinaryPrimitives.WriteUInt64LittleEndian(b[24..], Word1);
    }
}

/// <summary>Pending signals: one instance of each standard signal (its first <c>siginfo</c>), and real-time signals queued in order.</summary>
internal interface IPendingSignals
{
    /// <summary>A bit per pending signal (bit n-1 for signal n).</summary>
    ulong Pending { get; set; }

    /// <summary>The <c>siginfo</c> of each pending standard signal.</summary>
    SignalInfo[] Info { get; }

    /// <summary>Pending real-time signals (32 to 64), each instance with its own <c>siginfo</c>, oldest first.</summary>
    List<SignalInfo> Queue { get; }
}

/// <summary>A process's pending signals and its ITIMER_REAL (not inherited by fork, kept by execve).</summary>
internal sealed class SignalState : IPendingSignals
{
    public ulong Pending { get; set; }

    public SignalInfo[] Info { get; private init; } = new SignalInfo[65];

    public List<SignalInfo> Queue { get; private init; } = [];

    /// <summary>When ITIMER_REAL expires next (guest monotonic nanoseconds), or long.MaxValue.</summary>
    public long AlarmDeadline { get; set; } = long.MaxValue;

    /// <summary>ITIMER_REAL's reload interval in nanoseconds (0: one shot).</summary>
    public long AlarmInterval { get; set; }

    public SignalState Clone() => new() { Pending = Pending, Info = (SignalInfo[])Info.Clone(), Queue = [.. Queue], AlarmDeadline = AlarmDeadline, AlarmInterval = AlarmInterval };
}

/// <summary>A thread's own signal state: signals sent to it (tgkill, faults), and what an interrupted call left for delivery.</summary>
internal sealed class ThreadSignals : IPendingSignals
{
    public ulong Pending { get; set; }

    public SignalInfo[] Info { get; } = new SignalInfo[65];

    public List<SignalInfo> Queue { get; } = [];

    /// <summary>The signals rt_sigtimedwait waits for (0: not waiting): their arrival wakes the thread even while blocked.</summary>
    public ulong WaitSet { get; set; }

    /// <summary>The mask rt_sigsuspend replaced, restored when a handler's frame is built (or the call returns).</summary>
    public ulong? SavedMask { get; set; }

    /// <summary>The thread's signal mask while another thread runs (the running thread's is <see cref="AbiState.SignalMask"/>).</summary>
    public ulong Mask { get; set; }

    /// <summary>The thread's alternate signal stack while another thread runs (the running thread's is <see cref="AbiState.AltStack"/>).</summary>
    public (ulong Base, ulong Size) AltStack { get; set; }

    /// <summary>SS_AUTODISARM for <see cref="AltStack"/>.</summary>
    public int AltStackFlags { get; set; }

    /// <summary>The call an arriving signal interrupted, which SA_RESTART makes again after the handler; -1: none.</summary>
    public long RestartCall { get; set; } = -1;
}

// Signal delivery: building the x86-64 rt_sigframe on the user stack when a call returns (or a fault happens), and
// rt_sigreturn, which brings the interrupted context back from it. The layout is the kernel's
// (arch/x86/include/asm/sigframe.h, uapi/asm/sigcontext.h): pretcode, ucontext (flags, link, stack_t, sigcontext,
// sigset), siginfo, and a 64-byte aligned 512-byte FXSAVE image the sigcontext's fpstate points at.
internal sealed partial class LinuxAbi
{
    private const int Sigsegv = 11;
    private const ulong SaSiginfo = 4, SaOnstack = 0x0800_0000, SaRestart = 0x1000_0000, SaNodefer = 0x4000_0000, SaResethand = 0x8000_0000, SaRestorer = 0x0400_0000;
    private const int SiUser = 0, SiKernel = 0x80, SiTkill = -6;
    private const int UcontextSize = 304, McontextOffset = 40, SigmaskOffset = 296, FrameSize = 8 + UcontextSize + SignalInfo.Size;
    private const int FpstateSize = 512;

    /// <summary>RFLAGS bits a signal frame may carry back (the kernel's FIX_EFLAGS, without RF, which a return to CPL 3 never keeps here).</summary>
    private const ulong RestorableFlags = Supervisor.UserFlagsMask;

    private bool _sigreturn;

    private static ulong Bit(int signal) => 1UL << (signal - 1);

    private static bool Unblockable(int signal) => signal is 9 or 19;

    private static bool StopsByDefault(int signal) => signal is 19 or 20 or 21 or 22;

    /// <summary>Whether the default action of <paramref name="signal"/> ends the process (terminate or core).</summary>
    private static bool TerminatesByDefault(int signal) => !IgnoredByDefault(signal) && !StopsByDefault(signal);

    /// <summary>Whether <paramref name="action"/> throws <paramref name="signal"/> away (SIG_IGN, or a default that ignores or stops: there is no job control).</summary>
    private static bool Discards(SignalAction action, int signal) =>
        !Unblockable(signal) && (action.Handler == SigIgn || (action.Handler == SigDfl && !TerminatesByDefault(signal)));

    private SignalInfo UserInfo(int signal, int code) => new(signal, code, (ulong)(uint)CurrentProcess.Pid | ((ulong)HostUid << 32), 0);

    /// <summary>The signal mask of <paramref name="thread"/> (the running thread's lives in the process state, like its FS base).</summary>
    private ulong MaskOf(GuestThread thread) => thread == _current ? _state.SignalMask : thread.Signals.Mask;

    /// <summary>Signals of <paramref name="thread"/> that are pending and not blocked.</summary>
    private ulong Deliverable(GuestThread thread) => (thread.Signals.Pending | thread.Process.State.Signals.Pending) & ~MaskOf(thread);

    /// <summary>Keeps the per-thread signal state of the thread leaving the vCPU and installs <paramref name="next"/>'s (called as threads switch).</summary>
    private void SwitchSignalState(GuestThread previous, GuestThread next)
    {
        previous.Signals.Mask = _state.SignalMask;
        previous.Signals.AltStack = _state.AltStack;
        previous.Signals.AltStackFlags = _state.AltStackFlags;
        var state = next.Process.State;
        state.SignalMask = next.Signals.Mask;
        state.AltStack = next.Signals.AltStack;
        state.AltStackFlags = next.Signals.AltStackFlags;
    }

    /// <summary>Whether the machine must call <see cref="AfterSyscall"/>: rt_sigreturn ran, a signal can be delivered, or sigsuspend's mask must go back.</summary>
    public bool HasSignalWork => _sigreturn || _current.Signals.SavedMask.HasValue || Deliverable(_current) != 0;

    /// <summary>
    /// Sends <paramref name="info"/> to <paramref name="target"/> (to <paramref name="thread"/> when given, as tgkill and
    /// faults do). Linux's generation rules: SIGKILL ends the process; an unblocked signal whose action discards it is
    /// dropped; an unblocked one whose default ends the process ends it now; anything else is pending, and a thread
    /// that can take it is woken from a wait (its call returns EINTR, or restarts under SA_RESTART).
    /// </summary>
    private void SendSignal(GuestProcess target, GuestThread? thread, SignalInfo info)
    {
        int signal = info.Signal;
        if (target.Zombie || signal is < 1 or > 64)
        {
            return;
        }

        var state = target.State;
        var action = state.SignalActions[signal];
        // Process-directed: blocked only when every thread of the process blocks it.
        bool blocked = !Unblockable(signal) && (thread is not null
            ? (MaskOf(thread) & Bit(signal)) != 0
            : _threads.TrueForAll(t => t.Process != target || t.State == GuestThreadState.Exited || (MaskOf(t) & Bit(signal)) != 0));
        if (signal == 9 || (!blocked && action.Handler == SigDfl && TerminatesByDefault(signal)))
        {
            Terminate(target, signal);
            return;
        }

        if (!blocked && Discards(action, signal))
        {
            return;
        }

        Enqueue(thread is not null ? thread.Signals : state.Signals, info);
        if (blocked)
        {
            WakeSignalWaiter(target, thread, signal);
            return;
        }

        bool Takes(GuestThread t) => t.Process == target && t.State != GuestThreadState.Exited && (MaskOf(t) & Bit(signal)) == 0;
        var taker = thread ?? (Takes(_current) ? _current : null)
            ?? _threads.Find(t => Takes(t) && t.State == GuestThreadState.Blocked)
            ?? _threads.Find(Takes);
        if (taker is not null && taker != _current && taker.State == GuestThreadState.Blocked)
        {
            taker.State = GuestThreadState.Runnable;
            taker.FutexAddress = 0;
        }
    }

    /// <summary>rt_sigtimedwait and signalfd take blocked signals: wakes a thread that waits for <paramref name="signal"/>, and signalfd readers.</summary>
    private void WakeSignalWaiter(GuestProcess target, GuestThread? thread, int signal)
    {
        var waiter = _threads.Find(t => t.Process == target && (thread is null || t == thread) && t.State == GuestThreadState.Blocked && (t.Signals.WaitSet & Bit(signal)) != 0);
        if (waiter is not null && waiter != _current)
        {
            waiter.State = GuestThreadState.Runnable;
        }

        DescriptorsChanged();
    }

    /// <summary>Ends <paramref name="target"/> as a signal's default action does; the first process ends the run.</summary>
    private void Terminate(GuestProcess target, int signal)
    {
        var stop = new StopRequest(SandboxStatus.Signaled, -1, signal, $"The program received signal {signal} ({SignalName(signal)}).");
        if (target == CurrentProcess)
        {
            ExitProcess(signal, stop);
            return;
        }

        var saved = _current;
        var victim = _threads.Find(t => t.Process == target && t.State != GuestThreadState.Exited);
        if (victim is null)
        {
            return;
        }

        if (target.Parent is null)
        {
            Stop = stop;
            return;
        }

        // End the target as if it had called exit_group: run the exit path on its behalf.
        var switchBefore = PendingSwitch;
        _current = victim;
        _state = target.State;
        ExitProcess(signal, stop);
        PendingSwitch = switchBefore;
        _current = saved;
        _state = saved.Process.State;
    }

    /// <summary>The signal's name as signal(7) lists it.</summary>
    internal static string SignalName(int signal) => signal switch
    {
        1 => "SIGHUP", 2 => "SIGINT", 3 => "SIGQUIT", 4 => "SIGILL", 5 => "SIGTRAP", 6 => "SIGABRT", 7 => "SIGBUS", 8 => "SIGFPE",
        9 => "SIGKILL", 10 => "SIGUSR1", 11 => "SIGSEGV", 12 => "SIGUSR2", 13 => "SIGPIPE", 14 => "SIGALRM", 15 => "SIGTERM",
        16 => "SIGSTKFLT", 17 => "SIGCHLD", 18 => "SIGCONT", 19 => "SIGSTOP", 20 => "SIGTSTP", 21 => "SIGTTIN", 22 => "SIGTTOU",
        23 => "SIGURG", 24 => "SIGXCPU", 25 => "SIGXFSZ", 26 => "SIGVTALRM", 27 => "SIGPROF", 28 => "SIGWINCH", 29 => "SIGIO",
        30 => "SIGPWR", 31 => "SIGSYS", >= 34 and <= 64 => $"SIGRTMIN+{signal - 34}", _ => $"signal {signal}",
    };

    /// <summary>A blocking call met a deliverable signal: EINTR now; calls that SA_RESTART may make again are remembered.</summary>
    private long Interrupted(long nr, ulong a1, ulong a3)
    {
        bool neverRestarts = nr is Sys.Pause or Sys.RtSigsuspend or Sys.Nanosleep or Sys.ClockNanosleep or Sys.Poll or Sys.Ppoll
            or Sys.Select or Sys.Pselect6 or Sys.EpollWait or Sys.EpollPwait or Sys.EpollPwait2 or Sys.RtSigtimedwait;
        _current.Signals.RestartCall = neverRestarts ? -1 : nr;
        _current.Signals.WaitSet = 0;

        // clock_nanosleep writes the time left only for a relative sleep (a1 holds its flags; TIMER_ABSTIME is 1).
        ulong remaining = nr == Sys.Nanosleep ? a1 : nr == Sys.ClockNanosleep && (a1 & 1) == 0 ? a3 : 0;
        if (remaining != 0 && _blockDeadline != long.MaxValue)
        {
            long left = Math.Max(0, _blockDeadline - MonotonicNanoseconds());
            _ = WriteTimespec(remaining, left / 1_000_000_000, left % 1_000_000_000);
        }

        return -Errno.EINTR;
    }

    private long RtSigreturn()
    {
        _sigreturn = true;
        return 0;
    }

    /// <summary>
    /// After a call returned (and no other thread takes the vCPU): carries out rt_sigreturn, then delivers every
    /// deliverable signal. <paramref name="user"/> is the caller's user context as the call leaves it (RIP the return
    /// address, RAX the result, RCX and R11 as SYSCALL left them). Returns the context to resume instead, or null to
    /// resume as is; sets <see cref="Stop"/> or a thread switch when a signal ended the process.
    /// </summary>
    public (GeneralRegisters Registers, XsaveState Xsave)? AfterSyscall(in GeneralRegisters user, Func<XsaveState> xsave)
    {
        var context = user;
        XsaveState? fpu = null;
        bool changed = false;
        if (_sigreturn)
        {
            _sigreturn = false;
            _current.Signals.RestartCall = -1;
            fpu = xsave();
            if (!RestoreFrame(user.Rsp, ref context, ref fpu))
            {
                Terminate(CurrentProcess, Sigsegv);
                Stop = Stop is null ? null : Stop with { Message = $"The program's rt_sigreturn frame at 0x{user.Rsp:x} is invalid (SIGSEGV)." };
                return null;
            }

            changed = true;
        }

        long restart = _current.Signals.RestartCall;
        _current.Signals.RestartCall = -1;
        for (int round = 0; round < 64; round++)
        {
            int signal = TakeDeliverable(out var info);
            if (signal == 0)
            {
                break;
            }

            var action = _state.SignalActions[signal];
            if (Discards(action, signal))
            {
                continue;
            }

            if (action.Handler == SigDfl)
            {
                Terminate(CurrentProcess, signal);
                return null;
            }

            if (restart >= 0 && (action.Flags & SaRestart) != 0)
            {
                // Back on the SYSCALL instruction with the call's number: the handler returns into the call again.
                context.Rip -= 2;
                context.Rax = (ulong)restart;
            }

            restart = -1;
            fpu ??= xsave();
            if (!PushFrame(ref context, ref fpu, signal, info, action, fault: default))
            {
                Terminate(CurrentProcess, Sigsegv);
                Stop = Stop is null ? null : Stop with { Message = $"The program's stack at 0x{context.Rsp:x} cannot take the frame for signal {signal} ({SignalName(signal)}); it received SIGSEGV." };
                return null;
            }

            changed = true;
        }

        if (_current.Signals.SavedMask is { } saved)
        {
            _state.SignalMask = saved;
            _current.Signals.SavedMask = null;
        }

        return changed ? (context, fpu!) : null;
    }

    /// <summary>
    /// A fault at CPL 3 raised <paramref name="signal"/>: when the program has a handler for it that is not blocked, builds
    /// the frame and returns the handler's context. Null: the signal takes its default action (the run ends with the
    /// fault, as Linux's force_sig_fault does for a blocked or ignored synchronous signal).
    /// </summary>
    public (GeneralRegisters Registers, XsaveState Xsave)? DeliverFault(int signal, int code, ulong address, in GeneralRegisters user, XsaveState xsave, int trap, ulong error, ulong cr2)
    {
        var action = _state.SignalActions[signal];
        if (action.Handler <= SigIgn || (_state.SignalMask & Bit(signal)) != 0)
        {
            return null;
        }

        var context = user;
        XsaveState? fpu = xsave;
        var info = new SignalInfo(signal, code, address, 0);
        if (!PushFrame(ref context, ref fpu, signal, info, action, (trap, error, cr2)))
        {
            return null;
        }

        return (context, fpu!);
    }

    /// <summary>Takes the lowest deliverable signal, the thread's own first; 0 when none.</summary>
    private int TakeDeliverable(out SignalInfo info) => TakeSignal(~_state.SignalMask, out info);

    /// <summary>
    /// Builds the rt_sigframe for <paramref name="signal"/> below <paramref name="context"/>'s stack (or at the top of the
    /// alternate stack under SA_ONSTACK) and turns <paramref name="context"/> into the handler's: RDI the signal, RSI the
    /// siginfo, RDX the ucontext, RSP the frame (its first word the restorer, as if the restorer had called the handler),
    /// DF and TF clear, the FPU in its initial state. False when the frame cannot be written or the action has no
    /// restorer (x86-64 Linux requires SA_RESTORER).
    /// </summary>
    private bool PushFrame(ref GeneralRegisters context, ref XsaveState? fpu, int signal, SignalInfo info, SignalAction action, (int Trap, ulong Error, ulong Cr2) fault)
    {
        if ((action.Flags & SaRestorer) == 0 || !GuestLayout.IsUserCanonical(action.Restorer) || !GuestLayout.IsUserCanonical(action.Handler))
        {
            return false;
        }

        var alt = _state.AltStack;
        ulong sp = context.Rsp;
        bool onAlt = alt.Size != 0 && sp > alt.Base && sp - alt.Base <= alt.Size;
        int altFlags = alt.Size == 0 ? 2 : onAlt ? 1 : 0; // SS_DISABLE, SS_ONSTACK
        if ((action.Flags & SaOnstack) != 0 && alt.Size != 0 && !onAlt)
        {
            sp = alt.Base + alt.Size;
        }
        else
        {
            sp -= 128; // the red zone
        }

        ulong fpstate = (sp - FpstateSize) & ~63UL;
        ulong frame = ((fpstate - FrameSize) & ~15UL) - 8;
        if (!GuestLayout.IsUserCanonical(frame) || frame > sp)
        {
            return false;
        }

        ulong savedMask = _current.Signals.SavedMask ?? _state.SignalMask;
        Span<byte> f = stackalloc byte[FrameSize];
        f.Clear();
        BinaryPrimitives.WriteUInt64LittleEndian(f, action.Restorer);
        var uc = f[8..];
        BinaryPrimitives.WriteUInt64LittleEndian(uc, 2 | 4); // UC_SIGCONTEXT_SS | UC_STRICT_RESTORE_SS
        BinaryPrimitives.WriteUInt64LittleEndian(uc[16..], alt.Base);
        BinaryPrimitives.WriteInt32LittleEndian(uc[24..], altFlags);
        BinaryPrimitives.WriteUInt64LittleEndian(uc[32..], alt.Size);
        var mc = uc[McontextOffset..];
        ulong[] gregs =
        [
            context.R8, context.R9, context.R10, context.R11, context.R12, context.R13, context.R14, context.R15,
            context.Rdi, context.Rsi, context.Rbp, context.Rbx, context.Rdx, context.Rax, context.Rcx, context.Rsp,
            context.Rip, context.Rflags,
        ];
        for (int i = 0; i < gregs.Length; i++)
        {
            BinaryPrimitives.WriteUInt64LittleEndian(mc[(i * 8)..], gregs[i]);
        }

        BinaryPrimitives.WriteUInt16LittleEndian(mc[144..], GuestLayout.UserCode);
        BinaryPrimitives.WriteUInt16LittleEndian(mc[150..], GuestLayout.UserData);
        BinaryPrimitives.WriteUInt64LittleEndian(mc[152..], fault.Error);
        BinaryPrimitives.WriteUInt64LittleEndian(mc[160..], (ulong)fault.Trap);
        BinaryPrimitives.WriteUInt64LittleEndian(mc[168..], savedMask);
        BinaryPrimitives.WriteUInt64LittleEndian(mc[176..], fault.Cr2);
        BinaryPrimitives.WriteUInt64LittleEndian(mc[184..], fpstate);
        BinaryPrimitives.WriteUInt64LittleEndian(uc[SigmaskOffset..], savedMask);
        info.Write(f[(8 + UcontextSize)..]);

        Span<byte> fx = stackalloc byte[FpstateSize];
        fpu!.Area[..FpstateSize].CopyTo(fx);
        fx[464..].Clear(); // no FP_XSTATE_MAGIC1: the image is plain FXSAVE
        if (!WriteUser(fpstate, fx) || !WriteUser(frame, f))
        {
            return false;
        }

        context.Rdi = (ulong)signal;
        context.Rsi = frame + 8 + UcontextSize;
        context.Rdx = frame + 8;
        context.Rax = 0;
        context.Rsp = frame;
        context.Rip = action.Handler;
        context.Rflags &= ~(X86.Rflags.Direction | X86.Rflags.Trap);
        fpu = XsaveState.FromFpu(FpuState.Initial, fpu.Xcr0 & (ulong)(XsaveComponents.X87 | XsaveComponents.Sse));

        ulong blocked = _state.SignalMask | action.Mask;
        if ((action.Flags & SaNodefer) == 0)
        {
            blocked |= Bit(signal);
        }

        _state.SignalMask = blocked & ~(Bit(9) | Bit(19));
        _current.Signals.SavedMask = null;
        if ((action.Flags & SaResethand) != 0)
        {
            _state.SignalActions[signal] = default;
        }

        if (onAlt || (action.Flags & SaOnstack) == 0 || alt.Size == 0)
        {
            return true;
        }

        if ((_state.AltStackFlags & SsAutodisarm) != 0)
        {
            _state.AltStack = default;
            _state.AltStackFlags = 0;
        }

        return true;
    }

    /// <summary>
    /// rt_sigreturn: reads the ucontext at <paramref name="uc"/> (the frame after the handler's <c>ret</c> popped the
    /// restorer) and restores the general registers, RFLAGS (only the bits a program may set), the signal mask (never
    /// SIGKILL or SIGSTOP) and the FXSAVE image. CS and SS always come back as the user selectors, whatever the frame
    /// says; a non-canonical or kernel RIP or RSP, or an FXSAVE image with reserved MXCSR bits set, makes the frame invalid.
    /// </summary>
    private bool RestoreFrame(ulong uc, ref GeneralRegisters context, ref XsaveState? fpu)
    {
        Span<byte> u = stackalloc byte[UcontextSize];
        if (!ReadUser(uc, u))
        {
            return false;
        }

        var mc = u[McontextOffset..];
        var g = new ulong[18];
        for (int i = 0; i < g.Length; i++)
        {
            g[i] = BinaryPrimitives.ReadUInt64LittleEndian(mc[(i * 8)..]);
        }

        ulong G(int i) => g[i];
        ulong rip = G(16), rsp = G(15);
        if (!GuestLayout.IsUserCanonical(rip) || !GuestLayout.IsUserCanonical(rsp))
        {
            return false;
        }

        ulong fpstate = BinaryPrimitives.ReadUInt64LittleEndian(mc[184..]);
        var restoredFpu = XsaveState.FromFpu(FpuState.Initial, fpu!.Xcr0 & (ulong)(XsaveComponents.X87 | XsaveComponents.Sse));
        if (fpstate != 0)
        {
            Span<byte> fx = stackalloc byte[FpstateSize];
            if (!ReadUser(fpstate, fx))
            {
                return false;
            }

            uint mxcsr = BinaryPrimitives.ReadUInt32LittleEndian(fx[24..]);
            if ((mxcsr & 0xFFFF_0000) != 0)
            {
                return false; // FXRSTOR would raise #GP; Linux refuses the frame
            }

            var area = fpu.Area.ToArray();
            fx[..464].CopyTo(area); // 464-511 are software-reserved: they keep their old value
            ulong bv = BinaryPrimitives.ReadUInt64LittleEndian(area.AsSpan(XsaveState.LegacyRegionSize));
            BinaryPrimitives.WriteUInt64LittleEndian(area.AsSpan(XsaveState.LegacyRegionSize), bv | (ulong)(XsaveComponents.X87 | XsaveComponents.Sse));
            restoredFpu = new XsaveState(fpu.Xcr0, area);
        }

        context.R8 = G(0);
        context.R9 = G(1);
        context.R10 = G(2);
        context.R11 = G(3);
        context.R12 = G(4);
        context.R13 = G(5);
        context.R14 = G(6);
        context.R15 = G(7);
        context.Rdi = G(8);
        context.Rsi = G(9);
        context.Rbp = G(10);
        context.Rbx = G(11);
        context.Rdx = G(12);
        context.Rax = G(13);
        context.Rcx = G(14);
        context.Rsp = rsp;
        context.Rip = rip;
        context.Rflags = (context.Rflags & ~RestorableFlags) | (G(17) & RestorableFlags);
        fpu = restoredFpu;
        _state.SignalMask = BinaryPrimitives.ReadUInt64LittleEndian(u[SigmaskOffset..]) & ~(Bit(9) | Bit(19));
        return true;
    }
}
