using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace Virt.Cpu.Kvm;

/// <summary>
/// The real-time signal that kicks a vCPU thread out of <c>KVM_RUN</c>.
/// </summary>
/// <remarks>
/// <para>
/// The signal is <c>SIGRTMIN + 6</c>. CoreCLR uses <c>SIGRTMIN</c> itself to interrupt threads for
/// GC suspension (its <c>INJECT_ACTIVATION_SIGNAL</c>) and uses no other real-time signal, so any
/// signal above it is free; the offset leaves room for other native libraries that take the first few.
/// </para>
/// <para>
/// The handler does nothing and is installed once per process with <c>sigaction</c> and without
/// <c>SA_RESTART</c>, so a signal that arrives in <c>KVM_RUN</c> makes it return <c>EINTR</c>.
/// The signal is blocked on every thread that runs a vCPU and is only unblocked inside
/// <c>KVM_RUN</c>, through <c>KVM_SET_SIGNAL_MASK</c>. This matters for .NET: the handler is a
/// managed <c>[UnmanagedCallersOnly]</c> method, and entering it while the thread is executing
/// managed code would be an invalid reverse P/Invoke that ends the process. Because the signal is
/// blocked whenever the thread is outside <c>KVM_RUN</c>, the kernel never delivers it there: a signal
/// that arrives in <c>KVM_RUN</c> ends it with <c>EINTR</c> and stays pending (blocked again once
/// <c>KVM_RUN</c> restores the thread's mask) until <see cref="DrainPending"/> consumes it with
/// <c>sigtimedwait</c>. A blocked signal also never interrupts any other system call on the thread.
/// </para>
/// </remarks>
internal static unsafe class KickSignal
{
    /// <summary>Offset of the kick signal above <c>SIGRTMIN</c>.</summary>
    private const int OffsetFromSigRtMin = 6;

    private static readonly Lock s_installLock = new();
    private static int s_signal;

    [ThreadStatic]
    private static bool t_blocked;

    /// <summary>The signal number, installing the handler on first use.</summary>
    internal static int Number
    {
        get
        {
            int signal = Volatile.Read(ref s_signal);
            return signal != 0 ? signal : Install();
        }
    }

    private static int Install()
    {
        lock (s_installLock)
        {
            if (s_signal != 0)
            {
                return s_signal;
            }

            int signal = Interop.Libc.CurrentSigRtMin() + OffsetFromSigRtMin;
            if (signal > Interop.Libc.CurrentSigRtMax())
            {
                throw new HypervisorException("sigaction", 0, $"real-time signal {signal} is not available on this host");
            }

            var action = default(Interop.Libc.SigActionData);
            action.Handler = (nint)(delegate* unmanaged<int, void>)&Handler;
            action.Flags = 0; // no SA_RESTART: the interrupted KVM_RUN must return EINTR
            // SAFETY: action is a fully initialised struct sigaction on this frame; the handler is a static
            // unmanaged-callable method that lives as long as the process.
            if (Interop.Libc.SigAction(signal, &action, null) != 0)
            {
                throw KvmIoctls.Error("sigaction", Marshal.GetLastPInvokeError());
            }

            Volatile.Write(ref s_signal, signal);
            return signal;
        }
    }

    [UnmanagedCallersOnly]
    private static void Handler(int signal)
    {
        // Never runs on managed code (see the type's remarks); KVM_RUN returning EINTR is the whole effect.
    }

    /// <summary>Blocks the kick signal on the calling thread (once per thread). Call before publishing the thread as a vCPU runner.</summary>
    internal static void BlockOnCurrentThread()
    {
        if (t_blocked)
        {
            return;
        }

        var set = default(Interop.Libc.SigSet);
        set.Add(Number);
        // SAFETY: set is initialised on this frame; the old mask is not needed.
        int r = Interop.Libc.PthreadSigmask(Interop.Libc.SIG_BLOCK, &set, null);
        if (r != 0)
        {
            throw KvmIoctls.Error("pthread_sigmask", r);
        }

        t_blocked = true;
    }

    /// <summary>The calling thread's signal mask (first 64 signals) with the kick signal removed: the mask for <c>KVM_SET_SIGNAL_MASK</c>.</summary>
    internal static ulong RunMaskFromCurrentThread()
    {
        int signal = Number;
        var current = default(Interop.Libc.SigSet);
        // SAFETY: a null set only reads the mask into `current`, which lives on this frame.
        int r = Interop.Libc.PthreadSigmask(Interop.Libc.SIG_BLOCK, null, &current);
        if (r != 0)
        {
            throw KvmIoctls.Error("pthread_sigmask", r);
        }

        current.Remove(signal);
        return current.Bits[0];
    }

    /// <summary>Consumes kick signals pending on the calling thread, so the next <c>KVM_RUN</c> is not interrupted by an old kick.</summary>
    internal static void DrainPending()
    {
        var set = default(Interop.Libc.SigSet);
        set.Add(Number);
        var zero = default(Interop.Libc.TimeSpec);
        // SAFETY: set and timeout live on this frame; a zero timeout polls without blocking.
        while (Interop.Libc.SigTimedWait(&set, 0, &zero) > 0)
        {
        }
    }

    /// <summary>Sends the kick to thread <paramref name="tid"/> of this process.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    internal static void Send(int tid) => _ = Interop.Libc.Tgkill(ProcessId, tid, Number);

    private static readonly int ProcessId = Environment.ProcessId;
}
