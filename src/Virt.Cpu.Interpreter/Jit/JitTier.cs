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

    public JitTier(int threshold)
    {
        _threshold = threshold;
        if (threshold > 0)
        {
            // Start the compiler thread (and its warm-up compilation) now, while the guest is being set up, so
            // that the first hot block does not also wait for the compiler to be compiled.
            _ = JitCompilerThread.Shared;
        }
    }

    /// <summary>True where the runtime compiles dynamic code (not NativeAOT, not an interpreter-only runtime).</summary>
    public static bool Supported => RuntimeFeature.IsDynamicCodeSupported && RuntimeFeature.IsDynamicCodeCompiled;

    /// <summary>Counts one interpreted execution of <paramref name="b"/>; at the threshold, queues it (or, at 0, compiles it now).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Count(Block b)
    {
        int hits = ++b.Hits;
        if (hits == _threshold && !JitCompilerThread.Shared.TryEnqueue(b))
        {
            // The compiler is behind (code that runs many blocks a few hundred times each, such as a kernel booting):
            // the block starts counting again and is queued only if it stays hot, so the queue holds what is hot now
            // rather than a backlog of blocks whose moment has passed.
            b.Hits = 0;
        }
        else if (_threshold == 0 && hits == 1)
        {
            JitCompilerThread.Shared.CompileNow(b);
        }
    }
}

/// <summary>
/// The process's background compiler: one thread that compiles queued blocks, and the bounded code cache (a
/// second-chance queue of compiled blocks; an evicted block loses its delegate and the collectible method goes
/// with it).
/// </summary>
[System.Diagnostics.CodeAnalysis.SuppressMessage("Design", "CA1001:Types that own disposable fields should be disposable", Justification = "One instance lives as long as the process, with its background thread.")]
internal sealed class JitCompilerThread
{
    /// <summary>Compiled blocks kept at most.</summary>
    public const int Capacity = 4096;

    private static readonly Lazy<JitCompilerThread> Instance = new(() => new JitCompilerThread());
    private readonly BlockingCollection<Block> _queue = new(new ConcurrentQueue<Block>());
    private readonly ConcurrentQueue<Block> _cache = new();
    private readonly Lock _cacheLock = new();
    private int _cached;
    private long _compiled;
    private long _compileTicks;
    private long _ilBytes;
    private long _evicted;
    private long _deferred;

    private JitCompilerThread()
    {
        var thread = new Thread(Loop) { IsBackground = true, Name = "Virt interpreter JIT" };
        thread.Start();
    }

    public static JitCompilerThread Shared => Instance.Value;

    /// <summary>Blocks compiled so far in this process.</summary>
    public long Compiled => Interlocked.Read(ref _compiled);

    /// <summary>Time spent compiling, in <see cref="System.Diagnostics.Stopwatch"/> ticks.</summary>
    public long CompileTicks => Interlocked.Read(ref _compileTicks);

    /// <summary>Bytes of IL in the methods compiled so far (what the .NET JIT's time per block grows with).</summary>
    public long IlBytes => Interlocked.Read(ref _ilBytes);

    /// <summary>Compiled blocks dropped from the cache so far.</summary>
    public long Evicted => Interlocked.Read(ref _evicted);

    /// <summary>Compiled blocks in the cache now.</summary>
    public int Cached => Volatile.Read(ref _cached);

    /// <summary>Blocks waiting for the compiler at most; a block that becomes hot while the queue is full is not queued.</summary>
    public const int MaxBacklog = 8;

    /// <summary>Queues <paramref name="b"/> for compilation unless <see cref="MaxBacklog"/> blocks already wait.</summary>
    public bool TryEnqueue(Block b)
    {
        if (_queue.Count >= MaxBacklog)
        {
            Interlocked.Increment(ref _deferred);
            return false;
        }

        _queue.Add(b);
        return true;
    }

    /// <summary>Blocks that became hot while the queue was full, so far.</summary>
    public long Deferred => Interlocked.Read(ref _deferred);

    /// <summary>Compiles <paramref name="b"/> on the calling thread (threshold 0).</summary>
    public void CompileNow(Block b) => Compile(b);

    private void Loop()
    {
        // The first compilation in a process also compiles the compiler (and the runtime's dynamic-method
        // support): do it now, on a block of the common forms, while the vCPU still interprets its first blocks.
        Build(WarmUpBlock(), out _);

        foreach (var b in _queue.GetConsumingEnumerable())
        {
            Compile(b);
        }
    }

    /// <summary>A loop of the forms guest code uses most (ALU, loads, stores, INC/DEC, a conditional branch to itself).</summary>
    private static Block WarmUpBlock()
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
        var decoder = Iced.Intel.Decoder.Create(64, new Iced.Intel.ByteArrayCodeReader(code), Start);
        var ops = new List<Op>();
        var instrs = new List<Iced.Intel.Instruction>();
        while (decoder.IP < Start + (ulong)code.Length)
        {
            decoder.Decode(out var ins);
            instrs.Add(ins);
            var op = Translator.Translate(in ins, 64);
            op.Slot = ops.Count;
            ops.Add(op);
        }

        return new Block { Ops = [.. ops], Instrs = [.. instrs], Count = ops.Count, Lin = Start, PhysPage = Start, ModeKey = 64 };
    }

    private void Compile(Block b)
    {
        if (!b.Valid || b.Compiled != null || b.Uncompilable)
        {
            return;
        }

        long start = System.Diagnostics.Stopwatch.GetTimestamp();
        var code = Build(b, out int ilBytes);
        Interlocked.Add(ref _compileTicks, System.Diagnostics.Stopwatch.GetTimestamp() - start);
        Interlocked.Add(ref _ilBytes, ilBytes);
        if (code == null)
        {
            b.Uncompilable = true;
            return;
        }

        Interlocked.Increment(ref _compiled);
        Volatile.Write(ref b.Compiled, code);
        lock (_cacheLock)
        {
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
                _cached--;
                _evicted++;
            }
        }
    }

    /// <summary>Translates and JIT-compiles <paramref name="b"/>; null when the block gains nothing or the runtime rejects the method.</summary>
    [System.Diagnostics.CodeAnalysis.SuppressMessage("Design", "CA1031:Do not catch general exception types", Justification = "Compilation is an optimisation: any failure leaves the block to the interpreter instead of ending the compiler thread or the guest.")]
    private static CompiledBlock? Build(Block b, out int ilBytes)
    {
        ilBytes = 0;
        try
        {
            var code = BlockCompiler.Compile(b, out ilBytes);
            if (code != null)
            {
                // The .NET JIT compiles a dynamic method on its first call: make that call here, with no vCPU, so
                // the machine code is built on this thread (the prologue's first access of the vCPU throws before
                // anything else runs) and a method the JIT rejects is never published.
                try
                {
                    code(null!, b);
                }
                catch (NullReferenceException)
                {
                }
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
