using System.Collections.Concurrent;
using System.Runtime.CompilerServices;

namespace Virt.Cpu.Interpreter.Jit;

/// <summary>A block translated to IL and compiled by the .NET JIT: runs the block (and its self-loop) on <paramref name="vcpu"/>.</summary>
internal delegate void CompiledBlock(InterpreterVcpu vcpu, Block block);

/// <summary>
/// The compiled tier of one partition: counts block executions, hands hot blocks to the process's compiler
/// thread and publishes the compiled code on the block.
/// </summary>
internal sealed class JitTier
{
    private readonly int _threshold;

    public JitTier(int threshold) => _threshold = threshold;

    /// <summary>True where the runtime compiles dynamic code (not NativeAOT, not an interpreter-only runtime).</summary>
    public static bool Supported => RuntimeFeature.IsDynamicCodeSupported && RuntimeFeature.IsDynamicCodeCompiled;

    /// <summary>Counts one interpreted execution of <paramref name="b"/>; at the threshold, offers it to the compiler (or, at 0, compiles it now).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Count(Block b)
    {
        int hits = ++b.Hits;
        if (hits == _threshold)
        {
            // The block counts again from 0 either way: while it waits among the compiler's candidates, each further
            // threshold reached raises its heat, and when the compiler is behind and the block was not taken, it is
            // offered again only if it stays hot.
            b.Hits = 0;
            JitCompilerThread.Shared.Offer(b);
        }
        else if (_threshold == 0 && hits == 1)
        {
            JitCompilerThread.Shared.CompileNow(b);
        }
    }
}

/// <summary>
/// The process's background compiler: one thread that compiles the hottest of a few candidate blocks, and the bounded
/// code cache (a second-chance queue of compiled blocks; an evicted block loses its delegate and the collectible method
/// goes with it).
/// </summary>
[System.Diagnostics.CodeAnalysis.SuppressMessage("Design", "CA1001:Types that own disposable fields should be disposable", Justification = "One instance lives as long as the process, with its background thread.")]
internal sealed class JitCompilerThread
{
    /// <summary>Compiled blocks kept at most.</summary>
    public const int Capacity = 4096;

    private static readonly Lazy<JitCompilerThread> Instance = new(() => new JitCompilerThread());

    /// <summary>
    /// Exits through <see cref="InterpreterVcpu.JitLinked"/> after which a block's method is compiled again with its
    /// link checks inline (<see cref="BlockCompiler.InlineLinks"/>). Those checks make each method's IL about a fifth
    /// larger, which during a boot, when the compiler is always behind, costs more blocks interpreted than the faster
    /// transitions save; so methods are first compiled without them and only the ones that keep running are compiled
    /// again, when no candidate waits.
    /// </summary>
    public const int PromoteAfter = 1 << 16;

    /// <summary>Promotions waiting at most (more are dropped: the compiler is busy with new blocks anyway).</summary>
    private const int MaxPromotions = 256;

    private readonly JitCandidates _candidates = new();
    private readonly ConcurrentQueue<Block> _promotions = new();
    private int _promotionsQueued;
    private long _promoted;
    private readonly ConcurrentQueue<Block> _cache = new();
    /// <summary>
    /// Guards the code cache and the publication of compiled code. A vCPU that drops some blocks of a page (a write into
    /// their bytes, <c>InterpreterVcpu.InvalidateCodeBytes</c>) does so under it too, so a region's method is either
    /// published before the drop, which then finds it on its root and drops the root as well, or after it, when
    /// <see cref="AllValid"/> sees the dropped block and the method is not published.
    /// </summary>
    internal static readonly Lock CodeLock = new();

    private int _cached;
    private long _compiled;
    private long _compileTicks;
    private long _ilBytes;
    private long _evicted;
    private long _jitTicks;
    private long _allocated;

    private JitCompilerThread()
    {
        var thread = new Thread(Loop) { IsBackground = true, Name = "Virt JIT" };
        thread.Start();
    }

    public static JitCompilerThread Shared => Instance.Value;

    /// <summary>
    /// Starts the compiler thread and its warm-up compilation, once per process (<see cref="InterpreterHypervisor"/>'s
    /// constructor calls it): the first compilation also compiles the compiler, so it is done while the machine is being
    /// set up rather than when the guest's first block turns hot.
    /// </summary>
    public static void Start() => _ = Instance.Value;

    /// <summary>Blocks compiled so far in this process.</summary>
    public long Compiled => Interlocked.Read(ref _compiled);

    /// <summary>Time spent compiling, in <see cref="System.Diagnostics.Stopwatch"/> ticks.</summary>
    public long CompileTicks => Interlocked.Read(ref _compileTicks);

    /// <summary>Time the .NET JIT spent on the compiled methods, in <see cref="TimeSpan"/> ticks (part of <see cref="CompileTicks"/>).</summary>
    public long JitTicks => Interlocked.Read(ref _jitTicks);

    /// <summary>Bytes of IL in the methods compiled so far (what the .NET JIT's time per block grows with).</summary>
    public long IlBytes => Interlocked.Read(ref _ilBytes);

    /// <summary>Bytes of IL in the largest method compiled so far in this process (at most <see cref="BlockCompiler.MaxMethodIl"/>).</summary>
    public static int LargestMethodIl => Volatile.Read(ref s_largestIl);

    private static int s_largestIl;

    /// <summary>Compiled blocks dropped from the cache so far.</summary>
    public long Evicted => Interlocked.Read(ref _evicted);

    /// <summary>Compiled blocks in the cache now.</summary>
    public int Cached => Volatile.Read(ref _cached);

    /// <summary>Offers <paramref name="b"/>, which just reached the JIT threshold, to the compiler (<see cref="JitCandidates.Offer"/>).</summary>
    public void Offer(Block b) => _candidates.Offer(b);

    /// <summary>Candidates replaced by a new hot block before the compiler took them, so far.</summary>
    public long Dropped => _candidates.Dropped;

    /// <summary>Blocks that became hot while every candidate was hotter, so far.</summary>
    public long Deferred => _candidates.Deferred;

    /// <summary>Methods compiled again with their link checks inline so far (<see cref="PromoteAfter"/>).</summary>
    public long Promoted => Interlocked.Read(ref _promoted);

    /// <summary>
    /// The compiler's figures so far in one line, for the benchmark runners: blocks compiled, time per block (and the
    /// .NET JIT's part), IL bytes per block, the code cache, the candidates deferred and dropped, promotions.
    /// </summary>
    public string Describe()
    {
        long n = Compiled;
        double perBlock = n == 0 ? 0 : (double)CompileTicks / System.Diagnostics.Stopwatch.Frequency / n * 1e6;
        double jitPerBlock = n == 0 ? 0 : JitTicks / 10.0 / n;
        long il = n == 0 ? 0 : IlBytes / n;
        double kib = n == 0 ? 0 : Interlocked.Read(ref _allocated) / 1024.0 / n;
        return FormattableString.Invariant(
            $"{n} blocks compiled, {perBlock:F0} us per block ({jitPerBlock:F0} us in the .NET JIT), {il} IL bytes per block, {kib:F0} KiB allocated per block, {Cached} cached, {Evicted} evicted, {Deferred} deferred, {Dropped} dropped as stale, {Promoted} promoted to inline link checks");
    }

    /// <summary>Compiles <paramref name="b"/> on the calling thread (threshold 0), with its link checks inline at once.</summary>
    public void CompileNow(Block b) => Compile(b, BlockCompiler.InlineLinks);

    /// <summary>
    /// Asks for <paramref name="b"/>'s method to be compiled again with its link checks inline, once no candidate
    /// waits (called by the vCPU when the block reached <see cref="PromoteAfter"/> slow exits).
    /// </summary>
    public void Promote(Block b)
    {
        if (!BlockCompiler.InlineLinks || b.InlineLinks)
        {
            return;
        }

        if (Interlocked.Increment(ref _promotionsQueued) > MaxPromotions)
        {
            Interlocked.Decrement(ref _promotionsQueued);
            return;
        }

        _promotions.Enqueue(b);
        _candidates.Wake();
    }

    private void Loop()
    {
        // The first compilation in a process also compiles the compiler (and the runtime's dynamic-method
        // support): do it now, on a block of the common forms, while the vCPU still interprets its first blocks.
        Build(WarmUpBlock(), out _);

        while (true)
        {
            if (_candidates.TakeOrWoken() is { } b)
            {
                Compile(b, inlineLinks: false);
                continue;
            }

            // Woken for promotions: compile them while no new block waits.
            while (_candidates.Count == 0 && _promotions.TryDequeue(out var p))
            {
                Interlocked.Decrement(ref _promotionsQueued);
                Recompile(p);
            }
        }
    }

    /// <summary>A loop of the forms guest code uses most (ALU, loads, stores, INC/DEC, a conditional branch to itself).</summary>
    internal static Block WarmUpBlock()
    {
        const ulong Start = 0x1000;
        byte[] code =
        [
            0x0F, 0xB6, 0x16,       // movzx edx, byte [rsi]
            0x48, 0x01, 0xD0,       // add rax, rdx
            0x48, 0x89, 0x47, 0x08, // mov [rdi+8], rax
            0x83, 0xF9, 0x03,       // cmp ecx, 3
            0x48, 0xFF, 0xC9,       // dec rcx
            0x75, 0xEE,             // jnz start
        ];
        // Arrays rather than lists: List<Op> and List<Instruction> are framework generic code over this library's and
        // Iced's structs, which no ReadyToRun image holds; the warm-up would compile them for nothing else.
        const int Count = 6;
        var decoder = Iced.Intel.Decoder.Create(64, new Iced.Intel.ByteArrayCodeReader(code), Start);
        var ops = new Op[Count];
        var instrs = new Iced.Intel.Instruction[Count];
        for (int i = 0; i < Count; i++)
        {
            decoder.Decode(out instrs[i]);
            ops[i] = Translator.Translate(in instrs[i], 64);
            ops[i].Slot = i;
        }

        return new Block { Ops = ops, Instrs = instrs, Count = Count, Lin = Start, PhysPage = Start, ModeKey = 64 };
    }

    /// <summary>
    /// Compiles the method of <paramref name="b"/>, still published and valid, again with its link checks inline, and
    /// publishes it in place of the first. The code cache counts the block once either way: the new code is published
    /// under the cache's lock only while the block is still in the cache (eviction, which may run on a vCPU thread that
    /// compiles at threshold 0, clears the code under the same lock).
    /// </summary>
    private void Recompile(Block b)
    {
        if (!b.Valid || Volatile.Read(ref b.Compiled) == null || b.InlineLinks || b.Uncompilable)
        {
            return;
        }

        var code = Build(b, out _, inlineLinks: true);
        if (code == null)
        {
            return;
        }

        lock (CodeLock)
        {
            if (b.Compiled != null && AllValid(code))
            {
                b.InlineLinks = true;
                Volatile.Write(ref b.Compiled, code);
                NoteRegionMembers(b, code);
                Interlocked.Increment(ref _promoted);
            }
        }
    }

    private void Compile(Block b, bool inlineLinks)
    {
        if (!b.Valid || b.Compiled != null || b.Uncompilable)
        {
            return;
        }

        long start = System.Diagnostics.Stopwatch.GetTimestamp();
        var jitStart = System.Runtime.JitInfo.GetCompilationTime(currentThread: true);
        long allocStart = GC.GetAllocatedBytesForCurrentThread();
        var code = Build(b, out int ilBytes, inlineLinks);
        Interlocked.Add(ref _compileTicks, System.Diagnostics.Stopwatch.GetTimestamp() - start);
        Interlocked.Add(ref _allocated, GC.GetAllocatedBytesForCurrentThread() - allocStart);
        Interlocked.Add(ref _jitTicks, (System.Runtime.JitInfo.GetCompilationTime(currentThread: true) - jitStart).Ticks);
        Interlocked.Add(ref _ilBytes, ilBytes);
        if (code == null)
        {
            b.Uncompilable = true;
            return;
        }

        Interlocked.Increment(ref _compiled);
        lock (CodeLock)
        {
            if (!AllValid(code))
            {
                // A block of the region was dropped by a write into its bytes while the method was built.
                return;
            }

            b.InlineLinks = inlineLinks;
            Volatile.Write(ref b.Compiled, code);
            NoteRegionMembers(b, code);
            _cache.Enqueue(b);
            _cached++;
            int turns = 2 * _cached;
            while (_cached > Capacity && turns-- > 0 && _cache.TryDequeue(out var old))
            {
                if (old.Used && old.Valid)
                {
                    old.Used = false;
                    _cache.Enqueue(old);
                    continue;
                }

                Volatile.Write(ref old.Compiled, null);
                old.Hits = 0;
                old.SlowLinks = 0;
                old.InlineLinks = false;
                _cached--;
                _evicted++;
            }
        }
    }

    /// <summary>Names <paramref name="root"/> as the region that took in each other block of <paramref name="code"/>'s region (<see cref="Block.CoveredBy"/>).</summary>
    internal static void NoteRegionMembers(Block root, CompiledBlock code)
    {
        foreach (var m in (Block[])code.Target!)
        {
            if (m != root)
            {
                m.CoveredBy = root;
            }
        }
    }

    /// <summary>Whether every block a compiled method runs (its region, bound as the delegate's target) is still valid.</summary>
    private static bool AllValid(CompiledBlock code)
    {
        foreach (var r in (Block[])code.Target!)
        {
            if (!Volatile.Read(ref r.Valid))
            {
                return false;
            }
        }

        return true;
    }

    /// <summary>Translates and JIT-compiles <paramref name="b"/>; null when the block gains nothing or the runtime rejects the method.</summary>
    [System.Diagnostics.CodeAnalysis.SuppressMessage("Design", "CA1031:Do not catch general exception types", Justification = "Compilation is an optimisation: any failure leaves the block to the interpreter instead of ending the compiler thread or the guest.")]
    internal static CompiledBlock? Build(Block b, out int ilBytes, bool inlineLinks = false)
    {
        ilBytes = 0;
        try
        {
            var code = BlockCompiler.Compile(b, out ilBytes, inlineLinks);
            if (code != null)
            {
                for (int seen = Volatile.Read(ref s_largestIl); ilBytes > seen;)
                {
                    int was = Interlocked.CompareExchange(ref s_largestIl, ilBytes, seen);
                    seen = was == seen ? ilBytes : was;
                }

                // The .NET JIT compiles a dynamic method at its first call unless asked before: ask here, so the
                // machine code is built on this thread and a method the JIT rejects (InvalidProgramException) is
                // never published. PrepareDelegate compiles without calling the method; a call with no vCPU would
                // raise a NullReferenceException per method (about 30 us each, a first-chance exception for
                // debuggers and exception counters).
                RuntimeHelpers.PrepareDelegate(code);
            }

            return code;
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            // A block the compiler or the runtime cannot handle stays with the interpreter; the compiler thread
            // and the vCPU carry on.
            return null;
        }
    }
}

/// <summary>
/// The blocks waiting for the compiler: a few candidates, each with a heat (how often it reached the JIT threshold again
/// while it waited, halved as blocks are taken). The compiler takes the hottest, so when code turns hot faster than it
/// compiles (a kernel booting runs many blocks a few hundred times each) it compiles what runs most now rather than a
/// backlog in arrival order, and a candidate that does not stay hot gives its place to a block that just turned hot.
/// </summary>
internal sealed class JitCandidates
{
    /// <summary>Blocks waiting for the compiler at most.</summary>
    public const int Capacity = 32;

    /// <summary>Every candidate's heat is halved after this many blocks taken, so heat measures what is hot now.</summary>
    public const int HeatHalfLife = 8;

    private readonly Block?[] _slots = new Block?[Capacity];
    private readonly object _lock = new();
    private int _count;
    private int _taken;
    private bool _waiting;
    private bool _wake;
    private long _deferred;
    private long _dropped;

    /// <summary>Candidates waiting now.</summary>
    public int Count
    {
        get
        {
            lock (_lock)
            {
                return _count;
            }
        }
    }

    /// <summary>Blocks that became hot while every candidate was hotter, so far.</summary>
    public long Deferred => Interlocked.Read(ref _deferred);

    /// <summary>Candidates replaced by a new hot block before the compiler took them, so far.</summary>
    public long Dropped => Interlocked.Read(ref _dropped);

    /// <summary>
    /// Offers <paramref name="b"/>, which just reached the JIT threshold. A block already waiting gains heat; a new one
    /// takes a free slot, or the slot of the coldest candidate when that one has not reached the threshold again since
    /// it was offered (its moment has passed); otherwise it is deferred and counts afresh.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public void Offer(Block b)
    {
        if (b.Pending)
        {
            // Racy by design (another vCPU, the compiler taking it): a lost increment only misorders two candidates.
            b.Heat++;
            return;
        }

        if (b.Uncompilable || b.Compiled != null || !b.Valid)
        {
            return;
        }

        lock (_lock)
        {
            if (b.Pending)
            {
                b.Heat++;
                return;
            }

            int slot = _count;
            if (slot == Capacity)
            {
                slot = 0;
                for (int i = 1; i < Capacity; i++)
                {
                    if (_slots[i]!.Heat < _slots[slot]!.Heat)
                    {
                        slot = i;
                    }
                }

                if (_slots[slot]!.Heat > 1)
                {
                    _deferred++;
                    return;
                }

                _slots[slot]!.Pending = false;
                _dropped++;
            }
            else
            {
                _count++;
            }

            b.Heat = 1;
            b.Pending = true;
            _slots[slot] = b;
            if (_waiting)
            {
                _waiting = false;
                Monitor.Pulse(_lock);
            }
        }
    }

    /// <summary>Waits for a candidate and takes the hottest, or returns null when <see cref="Wake"/> was called and none waits.</summary>
    public Block? TakeOrWoken()
    {
        lock (_lock)
        {
            while (_count == 0)
            {
                if (_wake)
                {
                    _wake = false;
                    return null;
                }

                _waiting = true;
                Monitor.Wait(_lock);
            }

            return TakeLocked();
        }
    }

    /// <summary>Makes the compiler's next <see cref="TakeOrWoken"/> without candidates return (work other than candidates waits).</summary>
    public void Wake()
    {
        lock (_lock)
        {
            _wake = true;
            if (_waiting)
            {
                _waiting = false;
                Monitor.Pulse(_lock);
            }
        }
    }

    /// <summary>Takes the hottest candidate when there is one, without waiting.</summary>
    public bool TryTake([System.Diagnostics.CodeAnalysis.NotNullWhen(true)] out Block? b)
    {
        lock (_lock)
        {
            b = _count == 0 ? null : TakeLocked();
            return b != null;
        }
    }

    private Block TakeLocked()
    {
        int best = 0;
        for (int i = 1; i < _count; i++)
        {
            // Among equals the later slot, which holds the more recently offered block more often than not.
            if (_slots[i]!.Heat >= _slots[best]!.Heat)
            {
                best = i;
            }
        }

        var b = _slots[best]!;
        _count--;
        _slots[best] = _slots[_count];
        _slots[_count] = null;
        b.Pending = false;
        if (++_taken % HeatHalfLife == 0)
        {
            for (int i = 0; i < _count; i++)
            {
                _slots[i]!.Heat >>= 1;
            }
        }

        return b;
    }
}
