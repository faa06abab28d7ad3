using System.Runtime.CompilerServices;
using Virt.X86;

namespace Virt.Cpu.Interpreter;

/// <summary>The run loop and exception delivery.</summary>
internal sealed partial class InterpreterVcpu
{
    private readonly GuestFault _fault = new();
    private ulong _faultCr2;
    private bool _inBlock;

    /// <summary>Prepares the reusable fault object for <paramref name="vector"/>.</summary>
    internal GuestFault Fault(int vector, uint errorCode)
    {
        _nonCanonical = false;
        _fault.Vector = vector;
        _fault.ErrorCode = errorCode;
        return _fault;
    }

    public VcpuExit Run()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        Interlocked.Exchange(ref _executing, 1);
        try
        {
            return RunCore();
        }
        catch (Exception e) when (e is not GuestFault and not ExitSignal and not OutOfMemoryException)
        {
            // A defect in the interpreter must stop this guest, never the host.
            _pendingIo = default;
            ClearMmioLog();
            return VcpuExit.Failure(VcpuExitReason.InternalError, Describe($"interpreter failure: {e.GetType().Name}: {e.Message}", 0));
        }
        finally
        {
            Volatile.Write(ref _executing, 0);
        }
    }

    [System.Diagnostics.CodeAnalysis.SuppressMessage("Maintainability", "CA1502:Avoid excessive complexity", Justification = "The run loop: pending exits, the budget, timers, interrupts, halts and blocks in the order they take effect in each iteration.")]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private VcpuExit RunCore()
    {
        bool replay = false;
        if (_pendingIo.Kind != PendingIoKind.None)
        {
            var kind = _pendingIo.Kind;
            try
            {
                CompletePendingIo();
            }
            catch (GuestFault f)
            {
                RaiseException(f.Vector, f.ErrorCode);
            }
            catch (ExitSignal)
            {
                if (kind == PendingIoKind.Ins)
                {
                    // An INS element stored to MMIO: the exit delivers the write and the element is complete, so
                    // there is nothing to replay.
                    _pendingIo = default;
                    ClearMmioLog();
                }

                return TakeExit();
            }

            replay = kind is PendingIoKind.MmioRead or PendingIoKind.MmioWrite;
            if (replay)
            {
                _mmioPos = 0;
            }
        }

        _hasExit = false;
        _exitDataLength = 0;
        if (_debugTrapAfterExit)
        {
            // The instruction before the last exit single-stepped or met a data or I/O breakpoint.
            _debugTrapAfterExit = false;
            ulong dr6 = _pendingDebugTrap;
            _pendingDebugTrap = 0;
            RaiseDebugException(dr6, fault: false);
            if (_hasExit)
            {
                return TakeExit();
            }
        }

        if (_debugStepOwed)
        {
            _debugStepOwed = false;
            return VcpuExit.DebugEvent(GuestDebugSettings.SingleStepStatus, breakpointInstruction: false);
        }

        while (true)
        {
            // An instruction whose MMIO access the last exit served finishes first: leaving it unfinished would
            // make the next run execute it afresh and touch the device a second time.
            if (_exitRequested && !replay)
            {
                _exitRequested = false;
                return VcpuExit.Simple(VcpuExitReason.Interrupted);
            }

            if (_retired >= _budgetEnd && !replay)
            {
                return VcpuExit.Simple(VcpuExitReason.BudgetExhausted);
            }

            if (_remoteCodeWritePending)
            {
                DrainRemoteCodeWrites();
            }

            if (_writeTlbFlushRequested)
            {
                _writeTlbFlushRequested = false;
                FlushWriteTlb();
            }

            if (_plat != null && !replay)
            {
                if (_retired >= _timerStop)
                {
                    SyncClock();
                }

                if (_waitForStartup)
                {
                    Interlocked.Exchange(ref _idle, 1);
                    _partition.CountIdle(1);
                    var startExit = WaitForStartup();
                    _partition.CountIdle(-1);
                    Interlocked.Exchange(ref _idle, 0);
                    if (startExit is VcpuExit stillWaiting)
                    {
                        return stillWaiting;
                    }
                }

                if (_halted)
                {
                    Interlocked.Exchange(ref _idle, 1);
                    _partition.CountIdle(1);
                    var haltExit = WaitWhileHalted();
                    _partition.CountIdle(-1);
                    Interlocked.Exchange(ref _idle, 0);
                    if (haltExit is VcpuExit stillHalted)
                    {
                        return stillHalted;
                    }

                    if (_smp)
                    {
                        CatchUpClock();
                    }

                    if (_writeTlbFlushRequested)
                    {
                        _writeTlbFlushRequested = false;
                        FlushWriteTlb();
                    }
                }

                if (_plat.Attention && Index != 0 && _plat.LocalController.AcknowledgeInit())
                {
                    EnterWaitForStartup();
                    continue;
                }

                if ((_plat.Attention || _nmiLatched) && TryDeliverNmi())
                {
                    if (_hasExit)
                    {
                        return TakeExit();
                    }
                }
                else if (_plat.Attention && (_cpu.Flags & IF) != 0 && !_interruptShadow)
                {
                    DeliverPlatformInterrupt();
                    if (_hasExit)
                    {
                        return TakeExit();
                    }
                }
            }

            if (_pendingIrq >= 0 && (_cpu.Flags & IF) != 0 && !_interruptShadow && !replay)
            {
                int v = _pendingIrq;
                _pendingIrq = -1;
                DeliverExternal(v);
                if (_hasExit)
                {
                    return TakeExit();
                }
            }

            bool guestDebug = GuestDebugPending;
            bool single = replay || _interruptShadow || _trace != null || _debugActive || guestDebug;
            if (_debugActive && !replay)
            {
                _debugHits = 0;
                ulong breakpoints = CheckExecuteBreakpoints();
                if (breakpoints != 0)
                {
                    return VcpuExit.DebugEvent(breakpoints, breakpointInstruction: false);
                }
            }

            if (guestDebug && !replay && GuestExecuteBreakpoints() is var executeHits && executeHits != 0)
            {
                // An instruction breakpoint is a fault: the #DB frame points at the instruction, with RF set.
                RaiseDebugException(executeHits, fault: true);
                if (_hasExit)
                {
                    return TakeExit();
                }

                continue;
            }

            bool shadowAtStart = _interruptShadow;
            bool tfAtStart = (_cpu.Flags & TF) != 0;
            int deliveriesBefore = _deliveries;
            _stackShadow = false;
            _rfLoaded = false;

            _inBlock = false;
            try
            {
                if (!single)
                {
                    RunChained();
                    if (_hasExit)
                    {
                        return TakeExit();
                    }

                    continue;
                }

                var b = GetBlock();
                long left = _budgetEnd - _retired;
                int n = b.Count;
                if (single)
                {
                    n = 1;
                }

                if (left < n && !replay)
                {
                    n = (int)left;
                }

                _trace?.Invoke(Index, _cpu.Rip);
                _inBlock = true;
                _retired += ExecuteBlock(b, n);
                _inBlock = false;
            }
            catch (GuestFault f)
            {
                // Data breakpoints count only for instructions that complete.
                _debugHits = 0;
                _guestHits = 0;
                if (_nonCanonical && _inBlock && UsesStackSegment())
                {
                    // A non-canonical stack-segment address raises #SS(0), not #GP(0).
                    f.Vector = Vectors.SS;
                }

                _nonCanonical = false;
                RestartFaultingInstruction();
                if (replay)
                {
                    ClearMmioLog();
                    replay = false;
                }

                RaiseException(f.Vector, f.ErrorCode);
            }
            catch (ExitSignal)
            {
                RestartFaultingInstruction();
                return TakeExit();
            }

            if (replay)
            {
                ClearMmioLog();
                replay = false;
            }

            if (single && shadowAtStart)
            {
                _interruptShadow = false;
            }

            if (guestDebug)
            {
                FinishDebugInstruction(tfAtStart, deliveriesBefore);
            }

            if (_hasExit)
            {
                // A port-I/O instruction retired before its exit: the step it completed is reported by the next run.
                _debugStepOwed = _debugActive && _debugStep && _exit.Reason == VcpuExitReason.PortIo;
                return TakeExit();
            }

            if (_debugActive && TakeDebugEvent() is VcpuExit debugEvent)
            {
                return debugEvent;
            }
        }
    }

    private bool UsesStackSegment()
    {
        var b = _lastBlock;
        if (b == null)
        {
            return false;
        }

        ref Op op = ref b.Ops[_opIndex];
        bool memOperand = op.K0 == OpKindX.Mem || op.K1 == OpKindX.Mem || op.K2 == OpKindX.Mem;
        if (memOperand && op.Seg == SegSs)
        {
            return true;
        }

        // Implicit stack accesses: PUSH, POP, CALL, RET, ENTER, LEAVE, PUSHF, POPF. A memory operand of
        // PUSH/POP/CALL through another segment faults before the stack is touched.
        bool implicitStack = (InstructionTable.At(op.Form).Flags & FormFlags.StackAccess) != 0;
        return implicitStack && !(memOperand && !IsCanonical(Ea(ref op)));
    }

    /// <summary>Runs block after block until something needs the outer loop's attention.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void RunChained()
    {
        if (_jit != null)
        {
            // The tiered loop (counting, compiled blocks, chaining) is separate, so the interpreter alone runs the
            // plain loop below.
            RunTiered();
            return;
        }

        while (true)
        {
            var b = GetBlock();
            long left = _budgetEnd - _retired;
            int n = b.Count;
            if (left < n)
            {
                n = (int)left;
            }

            _inBlock = true;
            _retired += ExecuteBlock(b, n);
            _inBlock = false;
            if (NeedsAttention())
            {
                return;
            }
        }
    }

    private VcpuExit TakeExit()
    {
        _hasExit = false;
        return _exit;
    }

    /// <summary>After a fault inside a block: RIP back to the faulting instruction, earlier ones retired.</summary>
    private void RestartFaultingInstruction()
    {
        if (_taskSwitched)
        {
            // The fault came after a task switch committed: it belongs to the new task, whose EIP is in place; the
            // switching instruction completed.
            _taskSwitched = false;
            if (_inBlock)
            {
                _inBlock = false;
                _retired += _opIndex + 1;
            }

            return;
        }

        if (!_inBlock)
        {
            return;
        }

        _inBlock = false;
        var b = _lastBlock;
        if (b == null)
        {
            return;
        }

        ref Op op = ref b.Ops[_opIndex];
        _cpu.Rip = op.Next - op.Len;
        _retired += _opIndex;
    }

    private void DeliverExternal(int vector)
    {
        try
        {
            Deliver(vector, false, 0, software: false);
        }
        catch (GuestFault f)
        {
            RaiseException(f.Vector, f.ErrorCode);
        }
        catch (ExitSignal)
        {
            // Interrupt delivery through MMIO-backed tables: treat as a failure of the guest.
            SetExit(VcpuExit.Failure(VcpuExitReason.InternalError, Describe("interrupt delivery touched MMIO", (ulong)vector)));
        }
    }

    /// <summary>Delivers an exception, escalating to #DF and to a triple-fault shutdown as the hardware does.</summary>
    private void RaiseException(int vector, uint errorCode)
    {
        _taskSwitched = false;
        int firstVector = vector;
        uint firstError = errorCode;
        for (int depth = 0; depth < 4; depth++)
        {
            try
            {
                if (vector == Vectors.PF)
                {
                    _cpu.Cr2 = _faultCr2;
                }

                // Faults push RFLAGS with RF set, so that IRET back to the faulting instruction does not hit its
                // instruction breakpoint again (SDM Vol. 3, 18.3.1.1); traps and aborts do not.
                bool generalDetect = vector == Vectors.DB && _generalDetect;
                if (generalDetect)
                {
                    _generalDetect = false;
                    _cpu.Dr[6] = (_cpu.Dr[6] & ~Dr6Hits) | Dr6Bd;
                }

                _deliveringFault = IsFault(vector) || _forceRfInFrame || generalDetect;
                try
                {
                    Deliver(vector, Vectors.HasErrorCode(vector), errorCode, software: false);
                }
                finally
                {
                    _deliveringFault = false;
                }

                return;
            }
            catch (GuestFault f)
            {
                if (vector == Vectors.DF)
                {
                    break;
                }

                bool doubleFault = (Vectors.IsContributory(vector) && Vectors.IsContributory(f.Vector))
                    || (vector == Vectors.PF && (f.Vector == Vectors.PF || Vectors.IsContributory(f.Vector)));
                if (doubleFault)
                {
                    vector = Vectors.DF;
                    errorCode = 0;
                }
                else
                {
                    vector = f.Vector;
                    errorCode = f.ErrorCode;
                }
            }
            catch (ExitSignal)
            {
                break;
            }
        }

        SetExit(VcpuExit.Failure(VcpuExitReason.Shutdown, Describe(
            $"triple fault after vector {firstVector} (error code 0x{firstError:X}) could not be delivered", (ulong)vector)));
    }

    /// <summary>Set while a fault-class exception is delivered: the pushed RFLAGS carries RF.</summary>
    private bool _deliveringFault;

    /// <summary>RFLAGS as an exception or interrupt frame holds it (RF set while a fault is delivered).</summary>
    private ulong PushedRflags() => _deliveringFault ? GetRflags() | RF : GetRflags();

    /// <summary>Fault-class exceptions (SDM Vol. 3, Table 6-1): #DE, #BR, #UD, #NM, #TS, #NP, #SS, #GP, #PF, #MF, #AC, #XM, #VE.</summary>
    private static bool IsFault(int vector) => vector is 0 or 5 or 6 or 7 or 10 or 11 or 12 or 13 or 14 or 16 or 17 or 19 or 20;

    private VcpuFault Describe(string what, ulong code)
    {
        var bytes = new byte[15];
        int got = 0;
        try
        {
            ulong lin = LinearRip;
            for (; got < 15; got++)
            {
                ulong phys = Translate(lin + (ulong)got, AccRead, false);
                int r = FindRegion(phys);
                if (r < 0)
                {
                    break;
                }

                bytes[got] = (byte)ReadPhys(phys, 1);
            }
        }
        catch (GuestFault)
        {
        }

        return new VcpuFault(what, code, _cpu.Rip, bytes.AsMemory(0, got), GetGeneralRegisters());
    }

    /// <summary>Delivers interrupt or exception <paramref name="vector"/> through the IVT or IDT. RIP is the return address.</summary>
    private void Deliver(int vector, bool hasError, uint error, bool software)
    {
        if ((_cpu.Cr0 & Cr0.ProtectionEnable) == 0)
        {
            DeliverReal(vector);
        }
        else if ((_cpu.Efer & Efer.LongModeActive) != 0)
        {
            DeliverLong(vector, hasError, error, software);
        }
        else
        {
            DeliverProtected(vector, hasError, error, software);
        }

        _cpu.LzOp = LzNone;
        _stop = true;
        _deliveries++;
    }

    private void DeliverReal(int vector)
    {
        ulong entry = _cpu.Idt.Base + (ulong)(vector * 4);
        if ((ulong)(vector * 4) + 3 > _cpu.Idt.Limit)
        {
            throw Fault(Vectors.GP, 0);
        }

        ulong ip = ReadSystem(entry, 2);
        ushort cs = (ushort)ReadSystem(entry + 2, 2);
        Push(GetRflags() & 0xFFFF, 2);
        Push(_cpu.Seg[SegCs].Selector, 2);
        Push(_cpu.Rip & 0xFFFF, 2);
        _cpu.Flags &= ~(IF | TF | AC | RF);
        var c = _cpu.Seg[SegCs];
        c.Selector = cs;
        c.Base = (ulong)cs << 4;
        SetCs(c);
        _cpu.Rip = ip;
    }

    private static uint IdtError(int vector, bool software) => (uint)((vector << 3) | 2 | (software ? 0 : 1));

    private void DeliverLong(int vector, bool hasError, uint error, bool software)
    {
        ulong off = (ulong)(vector * 16);
        if (off + 15 > _cpu.Idt.Limit)
        {
            throw Fault(Vectors.GP, IdtError(vector, software));
        }

        ulong lo = ReadSystem(_cpu.Idt.Base + off, 8);
        ulong hi = ReadSystem(_cpu.Idt.Base + off + 8, 8);
        var gate = GateDescriptor.Decode(new UInt128(hi, lo));
        int dpl = gate.Dpl;
        if (gate.Type is not (SegmentType.InterruptGate or SegmentType.TrapGate))
        {
            throw Fault(Vectors.GP, IdtError(vector, software));
        }

        if (software && dpl < _cpu.Cpl)
        {
            throw Fault(Vectors.GP, IdtError(vector, software));
        }

        if (!gate.Present)
        {
            throw Fault(Vectors.NP, IdtError(vector, software));
        }

        ushort sel = gate.Selector;
        ulong target = gate.Offset;
        int ist = gate.InterruptStackTable;
        if ((sel & 0xFFFC) == 0)
        {
            throw Fault(Vectors.GP, software ? 0u : 1u);
        }

        var cs = ParseDescriptor(ReadDescriptor(sel), sel);
        if (!cs.IsCodeOrData || (cs.Type & 8) == 0 || !cs.Long || cs.DefaultBig || cs.Dpl > _cpu.Cpl)
        {
            throw Fault(Vectors.GP, (uint)(sel & 0xFFFC) | (software ? 0u : 1u));
        }

        if (!cs.Present)
        {
            throw Fault(Vectors.NP, (uint)(sel & 0xFFFC) | (software ? 0u : 1u));
        }

        if (!IsCanonical(target))
        {
            throw Fault(Vectors.GP, 0);
        }

        int newCpl = (cs.Type & 4) != 0 ? _cpu.Cpl : cs.Dpl;
        ulong rsp = Gpr(4);
        bool privChange = newCpl < _cpu.Cpl;
        if (ist != 0)
        {
            rsp = ReadSystem(_cpu.Tr.Base + 0x24 + (ulong)((ist - 1) * 8), 8);
        }
        else if (privChange)
        {
            rsp = ReadSystem(_cpu.Tr.Base + 4 + (ulong)(newCpl * 8), 8);
        }

        if (!IsCanonical(rsp))
        {
            throw Fault(Vectors.SS, 0);
        }

        rsp &= ~15UL;
        ulong flags = PushedRflags();
        Span<ulong> frame = [_cpu.Seg[SegSs].Selector, Gpr(4), flags, _cpu.Seg[SegCs].Selector, _cpu.Rip, error];
        int words = hasError ? 6 : 5;
        bool user = newCpl == 3;
        ulong top = rsp - (ulong)(words * 8);

        // Check the whole frame first so that a fault leaves no partial frame.
        Translate(top, AccWrite, user);
        Translate(rsp - 8, AccWrite, user);
        for (int k = 0; k < words; k++)
        {
            ulong a = rsp - (ulong)((k + 1) * 8);
            WritePhys(Translate(a, AccWrite, user), 8, frame[k]);
        }

        if (privChange)
        {
            _cpu.Seg[SegSs] = new SegmentRegister { Selector = (ushort)newCpl, Unusable = true, Dpl = (byte)newCpl, DefaultBig = true };
        }

        cs.Selector = (ushort)((sel & 0xFFFC) | newCpl);
        cs.Type |= 1;
        Gpr(4) = top;
        _cpu.Flags = flags & ~(TF | NT | RF | VM);
        if (gate.Type == SegmentType.InterruptGate)
        {
            _cpu.Flags &= ~IF;
        }

        SetCs(cs);
        _cpu.Rip = target;
    }

    [System.Diagnostics.CodeAnalysis.SuppressMessage("Maintainability", "CA1502:Avoid excessive complexity", Justification = "The gate and target checks follow the SDM's interrupt pseudocode in the order that decides which fault is raised; task gates branch off to the task switch.")]
    private void DeliverProtected(int vector, bool hasError, uint error, bool software)
    {
        ulong off = (ulong)(vector * 8);
        if (off + 7 > _cpu.Idt.Limit)
        {
            throw Fault(Vectors.GP, IdtError(vector, software));
        }

        // An 8-byte gate: the upper half of the offset is bits 48-63, and only 32-bit gates (type bit 3) use it.
        var gate = GateDescriptor.Decode(ReadSystem(_cpu.Idt.Base + off, 8));
        int type = gate.Type;
        int dpl = gate.Dpl;
        if (type is not (0x5 or 0x6 or 0x7 or SegmentType.InterruptGate or SegmentType.TrapGate))
        {
            throw Fault(Vectors.GP, IdtError(vector, software));
        }

        if (software && dpl < _cpu.Cpl)
        {
            throw Fault(Vectors.GP, IdtError(vector, software));
        }

        if (!gate.Present)
        {
            throw Fault(Vectors.NP, IdtError(vector, software));
        }

        if (type == 0x5)
        {
            DeliverThroughTaskGate(ReadSystem(_cpu.Idt.Base + off, 8), hasError, error);
            return;
        }

        bool gate32 = (type & 8) != 0;
        int size = gate32 ? 4 : 2;
        ushort sel = gate.Selector;
        ulong target = gate32 ? gate.Offset : gate.Offset & 0xFFFF;
        if ((sel & 0xFFFC) == 0)
        {
            throw Fault(Vectors.GP, software ? 0u : 1u);
        }

        var cs = ParseDescriptor(ReadDescriptor(sel), sel);
        if (!cs.IsCodeOrData || (cs.Type & 8) == 0 || cs.Dpl > _cpu.Cpl)
        {
            throw Fault(Vectors.GP, (uint)(sel & 0xFFFC));
        }

        if (!cs.Present)
        {
            throw Fault(Vectors.NP, (uint)(sel & 0xFFFC));
        }

        // From virtual-8086 mode only to a non-conforming CPL 0 code segment (SDM Vol. 3, 20.3.1.1).
        bool fromV86 = (_cpu.Flags & VM) != 0;
        if (fromV86 && (cs.Dpl != 0 || (cs.Type & 4) != 0))
        {
            throw Fault(Vectors.GP, (uint)(sel & 0xFFFC));
        }

        int newCpl = (cs.Type & 4) != 0 ? _cpu.Cpl : cs.Dpl;
        ulong flags = PushedRflags();
        ushort oldSs = _cpu.Seg[SegSs].Selector;
        ulong oldSp = Gpr(4);
        ushort oldCs = _cpu.Seg[SegCs].Selector;
        var savedSs = _cpu.Seg[SegSs];
        int savedCpl = _cpu.Cpl;
        if (newCpl < _cpu.Cpl)
        {
            // Inner stack from the 32-bit TSS.
            ulong esp = ReadSystem(_cpu.Tr.Base + 4 + (ulong)(newCpl * 8), 4);
            ushort ss = (ushort)ReadSystem(_cpu.Tr.Base + 8 + (ulong)(newCpl * 8), 2);
            var ssd = ParseDescriptor(ReadDescriptor(ss, Vectors.TS), ss);
            if ((ss & 3) != newCpl || ssd.Dpl != newCpl || !ssd.IsCodeOrData || (ssd.Type & 0xA) != 2)
            {
                throw Fault(Vectors.TS, (uint)(ss & 0xFFFC));
            }

            if (!ssd.Present)
            {
                throw Fault(Vectors.SS, (uint)(ss & 0xFFFC));
            }

            _cpu.Seg[SegSs] = ssd;
            _cpu.SegBase[SegSs] = ssd.Base;
            _cpu.Cpl = newCpl;
            UpdateSegmentCheck();
            Gpr(4) = ssd.DefaultBig ? esp : (Gpr(4) & ~0xFFFFUL) | (ushort)esp;
            try
            {
                if (fromV86)
                {
                    // The virtual-8086 data segments go on the stack first, then are nulled.
                    Push(_cpu.Seg[SegGs].Selector, size);
                    Push(_cpu.Seg[SegFs].Selector, size);
                    Push(_cpu.Seg[SegDs].Selector, size);
                    Push(_cpu.Seg[SegEs].Selector, size);
                }

                Push(oldSs, size);
                Push(oldSp, size);
            }
            catch
            {
                _cpu.Seg[SegSs] = savedSs;
                _cpu.SegBase[SegSs] = savedSs.Base;
                _cpu.Cpl = savedCpl;
                Gpr(4) = oldSp;
                throw;
            }
        }

        try
        {
            Push(flags, size);
            Push(oldCs, size);
            Push(_cpu.Rip, size);
            if (hasError)
            {
                Push(error, size);
            }
        }
        catch
        {
            _cpu.Seg[SegSs] = savedSs;
            _cpu.SegBase[SegSs] = savedSs.Base;
            _cpu.Cpl = savedCpl;
            Gpr(4) = oldSp;
            throw;
        }

        cs.Selector = (ushort)((sel & 0xFFFC) | newCpl);
        cs.Type |= 1;
        _cpu.Flags = flags & ~(TF | NT | RF | VM);
        if ((type & 1) == 0)
        {
            _cpu.Flags &= ~IF;
        }

        if (fromV86)
        {
            foreach (int s in (ReadOnlySpan<int>)[SegEs, SegDs, SegFs, SegGs])
            {
                _cpu.Seg[s] = new SegmentRegister { Unusable = true };
            }
        }

        SetCs(cs);
        _cpu.Rip = target;
    }
}
