using System.Runtime.InteropServices;
using static Virt.Cpu.Kvm.Interop.Kvm;

namespace Virt.Cpu.Kvm;

/// <summary>
/// A KVM vCPU: its descriptor, its mapped <c>kvm_run</c> page, and the kick that stops <c>KVM_RUN</c>.
/// </summary>
/// <remarks>
/// <para>
/// Kick protocol (<see cref="RequestExit"/> against <see cref="Run"/>). The requester sets
/// <c>_exitRequested</c>, then <c>kvm_run.immediate_exit</c>, then (after a full fence) reads
/// <c>_runner</c>, the tid of the thread inside (or about to enter) <c>KVM_RUN</c>, and signals that
/// thread. The runner publishes its tid with an interlocked exchange (a full fence) before <c>KVM_RUN</c>.
/// Either the requester sees the tid and the signal makes <c>KVM_RUN</c> return <c>EINTR</c> (a signal
/// that arrives just before entry stays pending and has the same effect), or the requester read
/// <c>_runner</c> before the runner published it, in which case the runner's <c>KVM_RUN</c> reads
/// <c>immediate_exit</c> after the requester wrote it and returns <c>EINTR</c> at once. No kick is lost.
/// </para>
/// <para>
/// After <c>EINTR</c> the runner clears <c>immediate_exit</c> first and only then takes the request.
/// A request it does not see was therefore written after the clear, so its <c>immediate_exit</c> is set
/// for the next entry. <c>EINTR</c> without a request (another signal, or a leftover kick) re-enters the guest.
/// </para>
/// <para>
/// The requester holds <c>_runner</c> at -1 while it signals, and the runner waits for that to end
/// before it leaves: the signalled thread is then always alive and still the runner, so a tid is never
/// signalled after the thread exited and the number was reused.
/// </para>
/// </remarks>
internal sealed unsafe partial class KvmVcpu : IVirtualCpu
{
    /// <summary><c>_runner</c> value while a requester is sending the signal.</summary>
    private const int RunnerLocked = -1;

    [ThreadStatic]
    private static int t_tid;

    private readonly KvmPartition _partition;
    private readonly KvmVcpuHandle _handle;
    private readonly int _runSize;
    private readonly Lock _kickLock = new();
    private KvmRun* _run;
    private int _runner;
    private int _exitRequested;
    private int _inRun;
    private int _disposed;
    private int _exitDataOffset;
    private int _exitDataLength;
    private int _pendingVector = -1;

    /// <summary>The last exit was port I/O or MMIO, which KVM completes (RIP past the instruction, a read's value in place) at the next KVM_RUN.</summary>
    private bool _completionPending;

    /// <summary>General registers travel through <c>kvm_run.s.regs</c> (KVM_CAP_SYNC_REGS) instead of KVM_GET/SET_REGS.</summary>
    private readonly bool _syncRegs;

    /// <summary>Set after the first KVM_RUN: from then on <c>kvm_run.s.regs</c> holds the registers (or the ones to load).</summary>
    private bool _syncRegsValid;

    /// <summary>Machine-check banks a vCPU gets (QEMU's default too).</summary>
    private const ulong DefaultMceBanks = 10;

    /// <summary>IA32_MCG_CAP bit 8: IA32_MCG_CTL is present.</summary>
    private const ulong McgCtlPresent = 1UL << 8;

    internal KvmVcpu(KvmPartition partition, int index)
    {
        _partition = partition;
        Index = index;
        _handle = KvmIoctls.CreateVcpu(partition.VmHandle, index);
        try
        {
            _runSize = partition.Host.VcpuMmapSize;
            if (_runSize < KvmRun.Size)
            {
                throw new HypervisorException(nameof(KVM_GET_VCPU_MMAP_SIZE), 0, $"kvm_run is {_runSize} bytes, smaller than the {KvmRun.Size} the ABI defines");
            }

            _run = (KvmRun*)KvmIoctls.MapRun(_handle, _runSize);
            if (partition.Host.HasSyncGeneralRegisters)
            {
                // KVM copies the general registers into kvm_run on every return, saving a KVM_GET_REGS per exit that needs them.
                _run->ValidRegs = KVM_SYNC_X86_REGS;
                _syncRegs = true;
            }

            KvmIoctls.SetSignalMask(_handle, KickSignal.RunMaskFromCurrentThread());
            SetCpuid(DefaultCpuid(partition.SupportedCpuid, index));
            if (partition.Host.McgCapSupported is ulong mce)
            {
                // Machine-check banks as a guest kernel expects them (and as the interpreter gives them): ten banks (KVM
                // takes up to 32; its supported value lists the flag bits only) and IA32_MCG_CTL where this KVM has it.
                // Without this KVM reports no banks at all.
                KvmIoctls.SetupMce(_handle, DefaultMceBanks | (mce & McgCtlPresent));
            }
        }
        catch
        {
            Unmap();
            _handle.Dispose();
            throw;
        }
    }

    /// <inheritdoc />
    public int Index { get; }

    internal bool IsDisposed => Volatile.Read(ref _disposed) != 0;

    /// <inheritdoc />
    public Span<byte> ExitData
    {
        get
        {
            if (_exitDataLength == 0 || _run == null)
            {
                return [];
            }

            // SAFETY: offset and length were validated against the kvm_run mapping when the exit was translated,
            // and the mapping lives until Dispose.
            return new Span<byte>((byte*)_run + _exitDataOffset, _exitDataLength);
        }
    }

    /// <inheritdoc />
    /// <exception cref="InvalidOperationException">Another thread is already inside <see cref="Run"/>.</exception>
    /// <exception cref="ObjectDisposedException">The vCPU was disposed.</exception>
    public VcpuExit Run()
    {
        if (Interlocked.CompareExchange(ref _inRun, 1, 0) != 0)
        {
            throw new InvalidOperationException($"vCPU {Index} is already running on another thread; run each vCPU from one thread.");
        }

        try
        {
            ObjectDisposedException.ThrowIf(IsDisposed, this);
            return RunCore();
        }
        finally
        {
            Volatile.Write(ref _inRun, 0);
        }
    }

    private VcpuExit RunCore()
    {
        KickSignal.BlockOnCurrentThread();
        int tid = t_tid != 0 ? t_tid : (t_tid = Interop.Libc.GetTid());
        _exitDataLength = 0;
        KvmRun* run = _run;
        while (true)
        {
            if (_pendingVector >= 0)
            {
                TryDeliverPendingInterrupt(run);
            }

            // Full fence: the requester's read of _runner and the kernel's read of immediate_exit cannot both miss.
            Interlocked.Exchange(ref _runner, tid);
            int errno = KvmIoctls.TryRun(_handle);
            LeaveRunner(tid);
            _syncRegsValid = _syncRegs;

            if (errno == 0)
            {
                if (TryTranslateExit(run, out var exit))
                {
                    // KVM finishes a port-I/O or MMIO instruction only at the next KVM_RUN.
                    _completionPending = exit.Reason is VcpuExitReason.PortIo or VcpuExitReason.Mmio;
                    return exit;
                }

                continue;
            }

            if (errno is Interop.Libc.EINTR or Interop.Libc.EAGAIN)
            {
                _completionPending = false;
                KickSignal.DrainPending();
                Volatile.Write(ref run->ImmediateExit, 0);
                Interlocked.MemoryBarrier();
                if (Interlocked.Exchange(ref _exitRequested, 0) != 0 || IsDisposed)
                {
                    return VcpuExit.Simple(VcpuExitReason.Interrupted);
                }

                continue;
            }

            // KVM refused to run the guest (e.g. EFAULT on a bad mapping): the guest stops, the host does not throw.
            return VcpuExit.Failure(VcpuExitReason.InternalError, BuildFault($"KVM_RUN failed: {Marshal.GetPInvokeErrorMessage(errno)} (errno {errno})", (ulong)errno));
        }
    }

    private void LeaveRunner(int tid)
    {
        if (Interlocked.CompareExchange(ref _runner, 0, tid) == tid)
        {
            return;
        }

        // A requester is signalling this thread right now; it restores the tid within microseconds.
        var spin = default(SpinWait);
        while (Interlocked.CompareExchange(ref _runner, 0, tid) != tid)
        {
            spin.SpinOnce();
        }
    }

    /// <inheritdoc />
    public void RequestExit()
    {
        lock (_kickLock)
        {
            KvmRun* run = _run;
            if (run == null)
            {
                return;
            }

            Volatile.Write(ref _exitRequested, 1);
            Volatile.Write(ref run->ImmediateExit, 1);
            Interlocked.MemoryBarrier();
            int tid = Volatile.Read(ref _runner);
            if (tid > 0 && Interlocked.CompareExchange(ref _runner, RunnerLocked, tid) == tid)
            {
                KickSignal.Send(tid);
                Volatile.Write(ref _runner, tid);
            }
        }
    }

    /// <inheritdoc />
    /// <exception cref="InvalidOperationException">The partition has an in-kernel interrupt controller; use <see cref="IPartition.SetInterruptLine"/>.</exception>
    public bool TryInjectInterrupt(byte vector)
    {
        ObjectDisposedException.ThrowIf(IsDisposed, this);
        if (_partition.HasInterruptController)
        {
            throw new InvalidOperationException("The partition has an in-kernel interrupt controller; raise interrupts with IPartition.SetInterruptLine.");
        }

        if (_pendingVector >= 0)
        {
            return false;
        }

        _pendingVector = vector;
        TryDeliverPendingInterrupt(_run);
        return true;
    }

    /// <summary>
    /// Hands the queued vector to KVM_INTERRUPT when the last exit said the guest can take it; otherwise asks
    /// KVM for an interrupt-window exit, after which <see cref="RunCore"/> comes back here.
    /// </summary>
    private void TryDeliverPendingInterrupt(KvmRun* run)
    {
        if (run->ReadyForInterruptInjection != 0 && run->IfFlag != 0)
        {
            int errno = KvmIoctls.TryInterrupt(_handle, (byte)_pendingVector);
            if (errno == 0)
            {
                _pendingVector = -1;
                run->RequestInterruptWindow = 0;
                return;
            }

            if (errno != Interop.Libc.EEXIST)
            {
                throw KvmIoctls.Error(nameof(KVM_INTERRUPT), errno);
            }
        }

        run->RequestInterruptWindow = 1;
    }

    /// <summary>
    /// The partition's CPUID with the APIC ID fields set for vCPU <paramref name="index"/>: leaf 1 EBX[31:24]
    /// (initial APIC ID) and EDX of leaves 0xB and 0x1F (x2APIC ID).
    /// </summary>
    internal static CpuidEntry[] DefaultCpuid(IReadOnlyList<CpuidEntry> supported, int index)
    {
        var entries = supported.ToArray();
        for (int i = 0; i < entries.Length; i++)
        {
            var e = entries[i];
            entries[i] = e.Function switch
            {
                1 => e with { Ebx = (e.Ebx & 0x00FF_FFFF) | ((uint)(index & 0xFF) << 24) },
                0xB or 0x1F => e with { Edx = (uint)index },
                _ => e,
            };
        }

        return entries;
    }

    /// <summary>Stops a running <see cref="Run"/> (it returns <see cref="VcpuExitReason.Interrupted"/>), unmaps <c>kvm_run</c> and closes the descriptor, once.</summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        RequestExit();
        var spin = default(SpinWait);
        while (Volatile.Read(ref _inRun) != 0)
        {
            spin.SpinOnce();
        }

        lock (_kickLock)
        {
            Unmap();
        }

        _handle.Dispose();
        _partition.OnVcpuDisposed(this);
    }

    private void Unmap()
    {
        if (_run != null)
        {
            _exitDataLength = 0;
            _ = Interop.Libc.Munmap((nint)_run, (nuint)_runSize);
            _run = null;
        }
    }
}
