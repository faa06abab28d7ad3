using System.Runtime.CompilerServices;

namespace Virt.Cpu.Interpreter;

/// <summary>The hooks between the interpreter and the compiled tier (<see cref="Jit.BlockCompiler"/>).</summary>
internal sealed partial class InterpreterVcpu
{
    /// <summary>The compiled tier this vCPU uses, or null when it only interprets.</summary>
    private readonly Jit.JitTier? _jit;

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
    internal bool JitMayIterate(int count) => _budgetEnd - _retired >= count && !NeedsAttention();

    /// <summary>
    /// On entry to a compiled self-loop of <paramref name="count"/> instructions without interpreter calls: the
    /// highest <see cref="_retired"/> after which another iteration may run (the budget allows a whole one and no
    /// timer is due), or <see cref="long.MinValue"/> when the run loop is needed already.
    /// </summary>
    internal long JitLoopLimit(int count) => NeedsAttention() ? long.MinValue : Math.Min(_budgetEnd - count, _timerStop - 1);

    /// <summary>Runs instruction <paramref name="index"/> of <paramref name="b"/> exactly as the interpreter does; returns 1 when it retired, 0 when not.</summary>
    internal int JitStep(Block b, int index) => ExecuteBlock(b, 1, index);

    /// <summary>The carry flag of the lazy state, for INC/DEC that follow flags the compiled block did not produce.</summary>
    internal ulong JitCarry() => CarryFlag();

    /// <summary>Evaluates condition <paramref name="cc"/> from the lazy state.</summary>
    internal bool JitCond(int cc) => Cond(cc);

    /// <summary>Slow path of a compiled read.</summary>
    internal ulong JitReadSlow(ulong lin, int size) => ReadSlow(lin, size);

    /// <summary>Slow path of a compiled read-modify-write's read: the write is checked first, as the hardware does.</summary>
    internal ulong JitReadRmwSlow(ulong lin, int size)
    {
        ProbeWrite(lin, size);
        return Read(lin, size);
    }

    /// <summary>Slow path of a compiled write.</summary>
    internal void JitWriteSlow(ulong lin, int size, ulong value) => WriteSlow(lin, size, value);

    /// <summary>Runs <paramref name="b"/> through its compiled code when that may run whole; false when the interpreter must run it.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private bool TryRunCompiled(Block b)
    {
        var code = b.Compiled;
        if (code == null || _budgetEnd - _retired < b.Count)
        {
            return false;
        }

        RunCompiled(b, code);
        return true;
    }

    private void RunCompiled(Block b, Jit.CompiledBlock code)
    {
        b.Used = true;
        _lastBlock = b;
        _inBlock = true;
        code(this, b);
        _inBlock = false;
    }

    /// <summary>Counts an interpreted run of <paramref name="b"/> towards the JIT threshold (at 0, compiles it now).</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private void CountForJit(Block b)
    {
        if (b.Cacheable && b.Compiled == null)
        {
            _jit!.Count(b);
        }
    }
}
