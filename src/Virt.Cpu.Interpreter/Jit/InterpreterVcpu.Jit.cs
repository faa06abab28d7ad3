using System.Runtime.CompilerServices;

namespace Virt.Cpu.Interpreter;

/// <summary>The hooks between the interpreter and the compiled tier (<see cref="Jit.BlockCompiler"/>).</summary>
internal sealed partial class InterpreterVcpu
{
    /// <summary>The compiled tier this vCPU uses, or null when it only interprets.</summary>
    private readonly Jit.JitTier? _jit;

    /// <summary>
    /// Raised whenever block lookups are flushed (paging changes): links made before no longer hold, except links to
    /// blocks reached through global translations made at or after <see cref="_globalLinkFloor"/> (a CR3 write keeps
    /// global translations).
    /// </summary>
    private long _linkGeneration;

    /// <summary>The link generation of the last flush that dropped global translations too (INVLPG, full flushes).</summary>
    private long _globalLinkFloor;

    /// <summary>Set by a compiled block that left through exit <see cref="_chainSlot"/> without a usable link: the run loop links the block it finds next.</summary>
    private Block? _chainFrom;

    private int _chainSlot;

    /// <summary>Compiled blocks entered through links since the run loop last called compiled code (bounds the nesting).</summary>
    private int _chainDepth;

    /// <summary>Compiled blocks entered through links before control returns to the run loop at most.</summary>
    internal const int MaxChainDepth = 64;

    /// <summary>
    /// The chaining gate: 0 while nothing that <see cref="NeedsAttention"/> reads may have changed since it was last
    /// found false, so a compiled exit may enter the next compiled block after checking only the budget, the timer
    /// and the nesting (<see cref="JitMayChain"/>). Whatever can make <see cref="NeedsAttention"/> true sets it to 1:
    /// every thread that asks something of this vCPU (an exit request, an interrupt, a code write, a write-translation
    /// flush, a debug register change), after making its request visible (<see cref="RaiseAttention"/>), and every
    /// call from compiled code into the interpreter (<see cref="EnterFromCompiled"/>: an instruction step, a memory slow
    /// path, the only ways compiled code changes the flags, modes and exits the check reads). Only <see cref="AttentionQuiet"/> clears it, before
    /// it evaluates the full check, so a request that arrives meanwhile is never lost.
    /// </summary>
    private int _attn = 1;

    /// <summary>Closes the chaining gate (<see cref="_attn"/>): called after a request that the run loop must see has been made visible.</summary>
    internal void RaiseAttention() => Volatile.Write(ref _attn, 1);

    /// <summary>
    /// The slow half of the chaining gate: clears it, then evaluates the full check (the clear first, with a full
    /// fence, so that a request made meanwhile either is seen here or closes the gate again); true when compiled code
    /// may chain on.
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    private bool AttentionQuiet()
    {
        Interlocked.Exchange(ref _attn, 0);
        if (NeedsAttention() || _segCheck)
        {
            _attn = 1;
            return false;
        }

        return true;
    }

    /// <summary>Instructions retired so far; compiled blocks add to it as they complete iterations.</summary>
    internal long RetiredCount => _retired;

    /// <summary>
    /// Something needs the run loop: the same conditions that end <see cref="RunChained"/> after a block, so a
    /// compiled self-loop leaves at the iteration boundary where the interpreter would have.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private bool NeedsAttention() =>
        _hasExit || _exitRequested || _retired >= _budgetEnd || _remoteCodeWritePending || _writeTlbFlushRequested
        || _interruptShadow || (_pendingIrq >= 0 && (_cpu.Flags & IF) != 0) || _retired >= _timerStop
        || (_plat is { Attention: true } && ((_cpu.Flags & IF) != 0 || _plat.LocalController.HasPendingNmi || (Index != 0 && _plat.LocalController.HasPendingInit)))
        || (_nmiLatched && !_nmiBlocked) || GuestDebugPending;

    /// <summary>Called by a compiled self-loop at its back edge: true when one more whole iteration of <paramref name="count"/> instructions may run.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal bool JitMayIterate(int count) => _budgetEnd - _retired >= count && !NeedsAttention() && !_segCheck;

    /// <summary>
    /// On entry to a compiled self-loop of <paramref name="count"/> instructions without interpreter calls: the
    /// highest <see cref="_retired"/> after which another iteration may run (the budget allows a whole one and no
    /// timer is due), or <see cref="long.MinValue"/> when the run loop is needed already.
    /// </summary>
    internal long JitLoopLimit(int count) => NeedsAttention() ? long.MinValue : Math.Min(_budgetEnd - count, _timerStop - 1);

    /// <summary>Runs instruction <paramref name="index"/> of <paramref name="b"/> exactly as the interpreter does; returns 1 when it retired, 0 when not.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal int JitStep(Block b, int index)
    {
        EnterFromCompiled(b);
        return ExecuteOps(b, index, index + 1) - index;
    }

    /// <summary>
    /// The slow path of a compiled SSE op (<see cref="Jit.BlockCompiler"/>): runs op <paramref name="index"/> of
    /// <paramref name="b"/> through its handler from the state written back (RIP aside, which these ops neither read
    /// nor change), raising its faults as the interpreter does.
    /// </summary>
    internal void JitSseStep(Block b, int index)
    {
        EnterFromCompiled(b);
        ref Op op = ref b.Ops[index];
        _handlers[op.Form](ref op, in b.Instrs[index]);
    }

    /// <summary>The carry flag of the lazy state, for INC/DEC that follow flags the compiled block did not produce.</summary>
    internal ulong JitCarry() => CarryFlag();

    /// <summary>After a compiled ROL/ROR: CF and OF from <paramref name="cfOf"/> (as flag bits), the other arithmetic flags as they were.</summary>
    internal void JitRotateFlags(ulong cfOf) => SetArith((GetRflags() & ArithFlags & ~(CF | OF)) | cfOf);

    /// <summary>After a compiled BT/BTS/BTR/BTC: CF from <paramref name="cf"/> (0 or 1), the other flags as they were, materialized as the handler materializes them.</summary>
    internal void JitSetCarry(ulong cf)
    {
        Materialize();
        _cpu.Flags = (_cpu.Flags & ~CF) | cf;
    }

    /// <summary>Evaluates condition <paramref name="cc"/> from the lazy state.</summary>
    internal bool JitCond(int cc) => Cond(cc);

    /// <summary>A compiled DIV/IDIV whose divisor is 0 or whose quotient overflows (state written back as before it): #DE, as the interpreter raises it.</summary>
    internal void JitDivideError(Block? block)
    {
        EnterFromCompiled(block);
        throw Fault(Vectors.DE, 0);
    }

    /// <summary>Slow path of a compiled read; <paramref name="block"/>, when not null, is the block being run (a region's; a fault restarts in it).</summary>
    internal ulong JitReadSlow(ulong lin, int size, Block? block)
    {
        EnterFromCompiled(block);
        return ReadSlow(lin, size);
    }

    /// <summary>Slow path of a compiled read-modify-write's read: the write is checked first, as the hardware does.</summary>
    internal ulong JitReadRmwSlow(ulong lin, int size, Block? block)
    {
        EnterFromCompiled(block);
        ProbeWrite(lin, size);
        return Read(lin, size);
    }

    /// <summary>
    /// Every call from compiled code into the interpreter starts here: it closes the chaining gate (<see cref="_attn"/>:
    /// the interpreter may change what the run loop's check reads) and names <paramref name="block"/>, when not null, as
    /// the block being run (a fault restarts in it).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void EnterFromCompiled(Block? block)
    {
        _attn = 1;
        if (block != null)
        {
            _lastBlock = block;
        }
    }

    /// <summary>
    /// The fast path of a compiled REP MOVS / REP STOS with 64-bit addresses (RCX = <paramref name="count"/>, RSI =
    /// <paramref name="rsi"/>, RDI = <paramref name="rdi"/>, RAX = <paramref name="rax"/>): moves the elements that lie
    /// wholly in pages the TLB maps for the access (so RAM, writable, dirty, no cached code), forwards, unless the
    /// destination lies less than one element above the source (<see cref="CopyElements"/>), at most <see cref="RepChunk"/> of them; returns how many it moved (0 with DF set). It
    /// never faults and changes no state but guest memory: the caller advances the registers.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal unsafe ulong JitRepFast(ulong count, ulong rsi, ulong rdi, ulong rax, int size, int seg, bool movs)
    {
        if ((_cpu.Flags & DF) != 0)
        {
            return 0;
        }

        ulong moved = 0;
        ulong budget = RepChunk;
        while (count != 0 && budget != 0)
        {
            ulong dst = StrLin(SegEs, rdi);
            long n = Math.Min((long)Math.Min(count, budget), (4096 - (long)(dst & 0xFFF)) / size);
            byte* d = n > 0 ? WritePtr(dst, size) : null;
            if (d == null)
            {
                break;
            }

            if (movs)
            {
                ulong src = StrLin(seg, rsi);
                n = Math.Min(n, (4096 - (long)(src & 0xFFF)) / size);
                byte* s = n > 0 ? ReadPtr(src, size) : null;
                // SAFETY: both ranges lie in 4 KiB RAM pages the TLB maps (the destination writable, dirty, without
                // cached code).
                if (s == null || !CopyElements(d, s, (int)(n * size), size, down: false))
                {
                    break;
                }

                rsi += (ulong)(n * size);
            }
            else
            {
                FillElements(d, (int)n, size, rax);
            }

            rdi += (ulong)(n * size);
            count -= (ulong)n;
            budget -= (ulong)n;
            moved += (ulong)n;
        }

        return moved;
    }

    /// <summary>
    /// Runs string instruction <paramref name="index"/> of <paramref name="b"/> in the interpreter from the state written
    /// back: 0 when it did not retire (a REP form to be continued, an exit), 1 when it retired but the run loop is needed
    /// (it invalidated code, or something needs attention), 2 when compiled code may go on after it.
    /// </summary>
    internal int JitStringStep(Block b, int index)
    {
        EnterFromCompiled(b);
        int r = ExecuteOps(b, index, index + 1) - index;
        return r == 1 && !_stop && !NeedsAttention() ? 2 : r;
    }

    /// <summary>Slow path of a compiled write (<paramref name="block"/> as for <see cref="JitReadSlow"/>).</summary>
    internal void JitWriteSlow(ulong lin, int size, ulong value, Block? block)
    {
        EnterFromCompiled(block);
        WriteSlow(lin, size, value);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void RunCompiled(Block b, Jit.CompiledBlock code)
    {
        // The compiled prologue marks the block used (chained blocks do the same); calls out of it that may fault name
        // their block, which becomes _lastBlock then.
        _inBlock = true;
        _chainDepth = 0;
        code(this, b);
        _inBlock = false;
    }

    /// <summary>
    /// Called by compiled code at an exit with a link to a compiled block: true when that block may run now (the
    /// budget allows it whole, no timer is due, nothing needs the run loop, and the nesting of linked calls is
    /// bounded). The last is the chaining gate (<see cref="_attn"/>): the full check runs only after something may
    /// have changed what it reads.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal bool JitMayChain(int count) => ChainBudgetAllows(count) && (_attn == 0 || AttentionQuiet());

    /// <summary>
    /// The part of <see cref="JitMayChain"/> before the chaining gate: the nesting is bounded (counted here), the
    /// budget allows <paramref name="count"/> instructions whole and no timer is due.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private bool ChainBudgetAllows(int count) =>
        ++_chainDepth <= MaxChainDepth && _budgetEnd - _retired >= count && _retired < _timerStop;

    /// <summary>
    /// Called by compiled code at exit <paramref name="slot"/> of <paramref name="from"/> (RIP already stored): the
    /// block that runs next when it is compiled and may run now (<see cref="JitMayChain"/>); otherwise null. The caller
    /// runs the block's <see cref="Block.Compiled"/> code, and returns instead if the compiler dropped it meanwhile.
    /// The exit's link is used when it was made in this link generation, for <paramref name="rip"/> when
    /// <paramref name="dynamic"/> (a computed target), and the block is still valid and compiled. Otherwise (a return
    /// or indirect jump to another target than last time, a link from before a flush of the lookups) the block comes
    /// from the first-level lookup, as the run loop would find it, and the exit is linked to it; without a compiled
    /// block there the exit is named in <see cref="_chainFrom"/>/<see cref="_chainSlot"/> so the run loop links the
    /// block it finds. The block is returned rather than stored through an <c>out</c> argument: a reference stored
    /// through a reference takes the GC's checked write barrier, a call on every exit.
    /// </summary>
    /// <remarks>
    /// Compiled code calls this at most exits, tens of millions of times in a boot, so its common path makes no call:
    /// the promotion, the chaining gate's slow half and the lookup are separate methods, each called as the last step
    /// of its path, so the method saves no registers (only the frame pointer). Not inlined: the .NET JIT would
    /// otherwise copy its body into every exit of every compiled method, which makes each compilation slower. (A
    /// method marked so is not given implicit tail calls, so those last calls are calls, not jumps.)
    /// </remarks>
    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    internal Block? JitLinked(Block from, int slot, bool dynamic, ulong rip)
    {
        if (++from.SlowLinks == Jit.JitCompilerThread.PromoteAfter)
        {
            return JitPromoteAndLink(from, slot, dynamic, rip);
        }

        return LinkedTarget(from, slot, dynamic, rip);
    }

    /// <summary>The body of <see cref="JitLinked"/>: the linked block when the link holds and chaining may go on, else the lookup.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private Block? LinkedTarget(Block from, int slot, bool dynamic, ulong rip)
    {
        var t = slot == 0 ? from.Link0 : from.Link1;
        if (t != null && (!dynamic || t.Lin == rip) && LinkHolds(slot == 0 ? from.LinkGen0 : from.LinkGen1, t)
            && Volatile.Read(ref t.Valid) && Volatile.Read(ref t.Compiled) != null)
        {
            // JitMayChain, with the chaining gate's slow half in a method of its own, called last.
            if (ChainBudgetAllows(t.Count))
            {
                return _attn == 0 ? t : ChainIfQuiet(t);
            }

            return null;
        }

        return JitLookup(from, slot);
    }

    /// <summary><see cref="JitLinked"/> at the exit that reaches <see cref="Jit.JitCompilerThread.PromoteAfter"/>: asks for the promotion, then links as usual.</summary>
    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    private Block? JitPromoteAndLink(Block from, int slot, bool dynamic, ulong rip)
    {
        Jit.JitCompilerThread.Shared.Promote(from);
        return LinkedTarget(from, slot, dynamic, rip);
    }

    /// <summary><paramref name="target"/> when the chaining gate's full check (<see cref="AttentionQuiet"/>) lets compiled code chain on, else null.</summary>
    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    private Block? ChainIfQuiet(Block target) => AttentionQuiet() ? target : null;

    /// <summary>Whether a link to <paramref name="target"/> made in generation <paramref name="generation"/> still holds.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private bool LinkHolds(long generation, Block target) =>
        generation == _linkGeneration || (target.Global && generation >= _globalLinkFloor);

    /// <summary>The slow half of <see cref="JitLinked"/>: the next block from the first-level lookup, linked to the exit.</summary>
    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    private Block? JitLookup(Block from, int slot)
    {
        if (LookupChains && CachedBlock(out _, out _, out _) is { } b && MayLink(from, b) && Volatile.Read(ref b.Compiled) != null)
        {
            Link(from, slot, b);
            return JitMayChain(b.Count) ? b : null;
        }

        _chainFrom = from;
        _chainSlot = slot;
        return null;
    }

    /// <summary>Compiled exits whose link does not hold look the next block up (<c>VIRT_INTERPRETER_JIT_LOOKUP=0</c> returns to the run loop instead, for comparison).</summary>
    private static readonly bool LookupChains = Environment.GetEnvironmentVariable("VIRT_INTERPRETER_JIT_LOOKUP") != "0";

    /// <summary>
    /// Whether an exit of <paramref name="from"/> may be linked to <paramref name="to"/>: both decoded for the same mode
    /// and CS base (a link is followed without looking the block up again, so it must not cross a mode switch).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static bool MayLink(Block from, Block to) => to.ModeKey == from.ModeKey && to.CsBase == from.CsBase;

    /// <summary>Links exit <paramref name="slot"/> of <paramref name="from"/> to <paramref name="to"/> in the current link generation.</summary>
    private void Link(Block from, int slot, Block to)
    {
        if (slot == 0)
        {
            from.Link0 = to;
            from.LinkGen0 = _linkGeneration;
        }
        else
        {
            from.Link1 = to;
            from.LinkGen1 = _linkGeneration;
        }
    }

    /// <summary>The run loop with the compiled tier: counts blocks, runs compiled ones, links compiled exits to the blocks that follow them.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void RunTiered()
    {
        _chainFrom = null;

        // Whatever happened since the last run (state set, interrupts injected) is checked at the first exit.
        _attn = 1;
        while (true)
        {
            Block b;
            if (_chainFrom is { } from)
            {
                _chainFrom = null;
                if (LinkedNext(from, _chainSlot) is { } linked)
                {
                    b = linked;
                }
                else
                {
                    b = GetBlock();
                    if (MayLink(from, b))
                    {
                        Link(from, _chainSlot, b);
                    }
                }
            }
            else
            {
                b = GetBlock();
            }

            var code = b.Compiled;
            if (code == null)
            {
                CountForJit(b);
                code = b.Compiled;
            }

            // Compiled code forms addresses inline without segment checks: it runs only while no segment needs them.
            if (code != null && !_segCheck && _budgetEnd - _retired >= b.Count)
            {
                RunCompiled(b, code);
            }
            else
            {
                long left = _budgetEnd - _retired;
                int n = b.Count;
                if (left < n)
                {
                    n = (int)left;
                }

                _inBlock = true;
                int retired = ExecuteBlock(b, n);
                _retired += retired;
                _inBlock = false;
                if (retired == b.Count)
                {
                    NoteInterpretedExit(b);
                }
            }

            if (NeedsAttention())
            {
                _chainFrom = null;
                return;
            }
        }
    }

    /// <summary>
    /// The block exit <paramref name="slot"/> of <paramref name="from"/> is linked to when the link holds for the
    /// current CS:RIP: made in this link generation (see <see cref="LinkHolds"/>), still valid, starting at this linear
    /// address, decoded in this mode with this CS base; exactly what the first-level lookup would find, without its
    /// hashing and slot load. Null otherwise.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private Block? LinkedNext(Block from, int slot)
    {
        var t = slot == 0 ? from.Link0 : from.Link1;
        if (t == null || !LinkHolds(slot == 0 ? from.LinkGen0 : from.LinkGen1, t))
        {
            return null;
        }

        ulong lin = CodeLinear(out ulong csBase);
        return RunsHere(t, lin, csBase) ? t : null;
    }

    /// <summary>
    /// After <paramref name="b"/> ran whole in the interpreter: names its exit (0 when its final branch or call went
    /// to its target, or it ended in a RET or a CALL through a register or memory; 1 when execution goes on at the next
    /// instruction) so the run loop links the block that follows, as compiled exits do; the compiler forms regions
    /// along these links (a computed exit's link is its expected target).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void NoteInterpretedExit(Block b)
    {
        ref Op last = ref b.Ops[b.Count - 1];
        ulong rip = _cpu.Rip;
        if ((last.Inline is InlineOp.Jcc or InlineOp.Jmp or InlineOp.Call && rip == last.Target) || Jit.BlockCompiler.IsComputedExit(in last))
        {
            _chainFrom = b;
            _chainSlot = 0;
        }
        else if (rip == last.Next)
        {
            _chainFrom = b;
            _chainSlot = 1;
        }
    }

    /// <summary>Counts an interpreted run of <paramref name="b"/> towards the JIT threshold (at 0, compiles it now).</summary>
    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    private void CountForJit(Block b) => _jit!.Count(b);
}
