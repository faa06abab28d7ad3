using System.Runtime.CompilerServices;
using System.Reflection;
using System.Reflection.Emit;

namespace Virt.Cpu.Interpreter.Jit;

/// <summary>
/// Translates one decoded <see cref="Block"/> (with the blocks of its region, when one is formed) to IL (a collectible <see cref="DynamicMethod"/> the .NET JIT
/// compiles). Each op is specialised: registers, sizes, immediates and displacements are constants. The common
/// integer forms run inline on guest registers held in IL locals; memory accesses inline the software TLB's
/// fast path and call the interpreter's slow path; every other form calls <see cref="InterpreterVcpu.JitStep"/>,
/// which runs that one op as the interpreter does. Before anything that can fault, exit or read CPU state the
/// locals and the pending flags are written back, and <c>_opIndex</c> names the op, so a fault restarts at the
/// faulting instruction with those before it retired. A block whose final branch targets its own start loops
/// in place while the budget allows a whole iteration and nothing needs the run loop. Exits call the compiled code of
/// the block linked to them directly (chaining) while the link holds.
/// </summary>
internal sealed partial class BlockCompiler
{
    private const BindingFlags Any = BindingFlags.Instance | BindingFlags.Static | BindingFlags.Public | BindingFlags.NonPublic;

    private static readonly FieldInfo CpuField = Field(typeof(InterpreterVcpu), "_cpu");
    private static readonly FieldInfo RetiredField = Field(typeof(InterpreterVcpu), "_retired");
    private static readonly FieldInfo ExitRequestedField = Field(typeof(InterpreterVcpu), "_exitRequested");
    private static readonly FieldInfo RemoteCodeWriteField = Field(typeof(InterpreterVcpu), "_remoteCodeWritePending");
    private static readonly FieldInfo WriteTlbFlushField = Field(typeof(InterpreterVcpu), "_writeTlbFlushRequested");
    private static readonly FieldInfo PlatField = Field(typeof(InterpreterVcpu), "_plat");
    private static readonly FieldInfo AttentionField = Field(typeof(InterpreterPlatform), "_attention");
    private static readonly MethodInfo LoopLimitMethod = Method(nameof(InterpreterVcpu.JitLoopLimit));
    private static readonly FieldInfo StopField = Field(typeof(InterpreterVcpu), "_stop");
    private static readonly FieldInfo OpIndexField = Field(typeof(InterpreterVcpu), "_opIndex");
    private static readonly FieldInfo RtlbField = Field(typeof(InterpreterVcpu), "_rtlb");
    private static readonly FieldInfo WtlbField = Field(typeof(InterpreterVcpu), "_wtlb");

    /// <summary>Entries in each software TLB (a power of two).</summary>
    private static readonly int TlbEntries = (int)Field(typeof(InterpreterVcpu), "TlbSize").GetRawConstantValue()!;

    /// <summary>Byte offset of the register file in <see cref="CpuState"/>.</summary>
    private static readonly int GprOffset = ComputeGprOffset();
    private static readonly FieldInfo SegBaseField = Field(typeof(CpuState), nameof(CpuState.SegBase));
    private static readonly FieldInfo SegBaseElement = Field(typeof(SegmentBaseFile), "_element0");
    private static readonly FieldInfo RipField = Field(typeof(CpuState), nameof(CpuState.Rip));
    private static readonly FieldInfo LzOpField = Field(typeof(CpuState), nameof(CpuState.LzOp));
    private static readonly FieldInfo LzSizeField = Field(typeof(CpuState), nameof(CpuState.LzSize));
    private static readonly FieldInfo LzAField = Field(typeof(CpuState), nameof(CpuState.LzA));
    private static readonly FieldInfo LzBField = Field(typeof(CpuState), nameof(CpuState.LzB));
    private static readonly FieldInfo LzRField = Field(typeof(CpuState), nameof(CpuState.LzR));
    private static readonly FieldInfo LzCfField = Field(typeof(CpuState), nameof(CpuState.LzCf));
    private static readonly FieldInfo TagField = Field(typeof(TlbEntry), nameof(TlbEntry.Tag));
    private static readonly FieldInfo HostField = Field(typeof(TlbEntry), nameof(TlbEntry.Host));
    private static readonly MethodInfo StepMethod = Method(nameof(InterpreterVcpu.JitStep));
    private static readonly MethodInfo CarryMethod = Method(nameof(InterpreterVcpu.JitCarry));
    private static readonly MethodInfo RotateFlagsMethod = Method(nameof(InterpreterVcpu.JitRotateFlags));
    private static readonly MethodInfo CondMethod = Method(nameof(InterpreterVcpu.JitCond));
    private static readonly MethodInfo ReadSlowMethod = Method(nameof(InterpreterVcpu.JitReadSlow));
    private static readonly MethodInfo ReadRmwSlowMethod = Method(nameof(InterpreterVcpu.JitReadRmwSlow));
    private static readonly MethodInfo WriteSlowMethod = Method(nameof(InterpreterVcpu.JitWriteSlow));
    private static readonly MethodInfo RepFastMethod = Method(nameof(InterpreterVcpu.JitRepFast));
    private static readonly MethodInfo StringStepMethod = Method(nameof(InterpreterVcpu.JitStringStep));
    private static readonly MethodInfo MayIterateMethod = Method(nameof(InterpreterVcpu.JitMayIterate));
    private static readonly MethodInfo LinkedMethod = Method(nameof(InterpreterVcpu.JitLinked));
    private static readonly FieldInfo UsedField = Field(typeof(Block), nameof(Block.Used));
    private static readonly FieldInfo CompiledField = Field(typeof(Block), nameof(Block.Compiled));
    private static readonly FieldInfo Link0Field = Field(typeof(Block), nameof(Block.Link0));
    private static readonly FieldInfo Link1Field = Field(typeof(Block), nameof(Block.Link1));
    private static readonly FieldInfo LinkGen0Field = Field(typeof(Block), nameof(Block.LinkGen0));
    private static readonly FieldInfo LinkGen1Field = Field(typeof(Block), nameof(Block.LinkGen1));
    private static readonly FieldInfo ValidField = Field(typeof(Block), nameof(Block.Valid));
    private static readonly FieldInfo BlockLinField = Field(typeof(Block), nameof(Block.Lin));
    private static readonly FieldInfo BlockCountField = Field(typeof(Block), nameof(Block.Count));
    private static readonly FieldInfo LinkGenerationField = Field(typeof(InterpreterVcpu), "_linkGeneration");
    private static readonly MethodInfo MayChainMethod = Method(nameof(InterpreterVcpu.JitMayChain));
    private static readonly MethodInfo ImulMethod = typeof(BlockCompiler).GetMethod(nameof(Imul), Any)!;
    private static readonly MethodInfo InvokeMethod = typeof(CompiledBlock).GetMethod("Invoke")!;

    // Lazy-flag kinds (InterpreterVcpu.Flags.cs): -1 here means "in CpuState, not known at compile time".
    // LzShift: SF, ZF, PF from the result, CF and OF as flag bits in LzCf (SHL/SHR/SAR; IMUL uses it too, with CF and OF
    // both set on overflow, which gives the same flags as the interpreter's eager ones; so do one-operand MUL and IMUL).
    // LzAdc/LzSbb: ADD/SUB's operands and result with the carry in (0 or 1) in LzCf.
    private const int Unknown = -1, LzAdd = 1, LzSub = 2, LzLogic = 3, LzInc = 4, LzDec = 5, LzAdc = 6, LzSbb = 7, LzShift = 8;
    private const ulong CfBit = 1, OfBit = 0x800;

    private readonly Block _b;

    /// <summary>The blocks compiled together (the first is <see cref="_b"/>); one block unless a region was formed.</summary>
    private readonly Block[] _region;

    /// <summary>Per region block that ends in a computed exit, the block its code expects there (see <see cref="FormRegion"/>).</summary>
    private readonly Dictionary<Block, Block> _speculated;

    /// <summary>Start RIP of each region block, in region order (at most <see cref="MaxRegionBlocks"/>: searched in order, see <see cref="RegionIndex"/>).</summary>
    private readonly ulong[] _regionStarts;

    /// <summary>The ops of the block being emitted (<see cref="_cur"/> in <see cref="_region"/>).</summary>
    private Op[] _ops;
    private int _cur;
    private readonly ILGenerator _il;
    private readonly int _bitness;
    private readonly ulong _userKey;
    private readonly LocalBuilder?[] _reg = new LocalBuilder?[16];

    /// <summary>The CPU state; the first entries of the read and write TLBs (see <see cref="EmitTlbCheck"/>); the memory operand's address, value and TLB entry; a scratch value.</summary>
    private readonly LocalBuilder _cpu, _rtlb, _wtlb, _lin, _val, _entry, _tmp;
    private readonly LocalBuilder _fa, _fb, _fr, _fcf, _ta, _tb, _tc;

    /// <summary>The vCPU's retired count, kept in a local: stored to the field before anything that reads it and at exits.</summary>
    private readonly LocalBuilder _rc;
    private int _flagKind = Unknown;
    private int _flagSize;

    /// <summary>
    /// While the flags are INC's or DEC's, where their carry is: <see cref="Unknown"/> when in <see cref="_fcf"/>, else the
    /// producer before them whose carry they keep (<see cref="LzAdd"/> or <see cref="LzSub"/> of <see cref="_cfSize"/>
    /// bytes, its operands still in <see cref="_fa"/> and <see cref="_fb"/>, or <see cref="LzLogic"/>, carry 0): computed
    /// only where it is read or stored, so an <c>add; dec; jnz</c> loop computes no carry per iteration.
    /// </summary>
    private int _cfKind = Unknown;
    private int _cfSize;

    /// <summary>
    /// The second flag operand when it is a constant (an immediate, or 0 for logic operations, shifts and IMUL): not
    /// stored in <see cref="_fb"/> but pushed where it is read (<see cref="EmitLoadFb"/>), so it takes no register across
    /// a loop; null when <see cref="_fb"/> holds it.
    /// </summary>
    private long? _fbImm;

    /// <summary>What the compiler knows of the flags (see <see cref="FlagState"/>).</summary>
    private FlagState Flags
    {
        get => new(_flagKind, _flagSize, _cfKind, _cfSize, _fbImm);
        set => (_flagKind, _flagSize, _cfKind, _cfSize, _fbImm) = value;
    }

    /// <summary>
    /// The flag producer whose operands the flag locals hold (<see cref="Unknown"/>: the flags are in the CPU state), its
    /// size, for INC/DEC where their carry is (<see cref="_cfKind"/>), and the second operand when it is a constant
    /// (<see cref="_fbImm"/>).
    /// </summary>
    internal readonly record struct FlagState(int Kind, int Size, int CfKind, int CfSize, long? B)
    {
        public static readonly FlagState InState = new(Unknown, 0, Unknown, 0, null);

        // Written out: the synthesized members compare and hash the nullable through EqualityComparer<long?>, framework
        // generic code that no ReadyToRun image holds.
        public bool Equals(FlagState other) =>
            Kind == other.Kind && Size == other.Size && CfKind == other.CfKind && CfSize == other.CfSize && B == other.B;

        public override int GetHashCode()
        {
            long b = B.GetValueOrDefault();
            int h = (Kind * 31) + Size;
            h = (h * 31) + CfKind;
            h = (h * 31) + CfSize;
            return (h * 31) + (int)b + (int)(b >> 32) + (B.HasValue ? 1 : 0);
        }
    }
    private bool _flagsDirty;

    /// <summary>
    /// Registers the method writes (a bit each); only these are written back to the CPU state at exits, slow paths and
    /// interpreter calls: a register the method only reads holds in its local what the state holds (loaded on entry and
    /// reloaded after every interpreter call), so storing it would change nothing. Known from a first emission of the
    /// same method (<see cref="Compile(Block, out int, bool)"/>); that first emission writes back every register it holds.
    /// </summary>
    private readonly int _writeBack;

    /// <summary>Registers written by the code emitted so far (<see cref="StoreReg"/>).</summary>
    private int _written;

    /// <summary>
    /// The TLB references the prologue loads (1: the read TLB, 2: the write TLB): those the probe emission used (the probe
    /// loads both). A method without memory accesses loads neither, which saves the array loads and their checks.
    /// </summary>
    private readonly int _tlbLoads;

    /// <summary>The TLB references the code emitted so far uses (<see cref="NoteTlb"/>).</summary>
    private int _tlbUsed;

    private BlockCompiler(Block[] region, Dictionary<Block, Block> speculated, ILGenerator il, int writeBack, bool inlineLinks, Dictionary<TailKey, int>? shared = null, int tlbLoads = 3)
    {
        _tlbLoads = tlbLoads;
        _speculated = speculated;
        _inlineLinks = inlineLinks;
        _writeBack = writeBack;
        _shared = shared;
        var b = region[0];
        _b = b;
        _region = region;
        _regionStarts = new ulong[region.Length];
        _blockLabels = new Label[region.Length];
        _entryFlags = new FlagState[region.Length];
        _entryDead = new bool[region.Length];
        for (int k = 0; k < region.Length; k++)
        {
            _regionStarts[k] = OpStart(in region[k].Ops[0]);
        }

        _ops = b.Ops;
        _il = il;
        _bitness = b.ModeKey & 0x7F;
        _userKey = (ulong)(b.ModeKey >> 7) & 1;
        _cpu = il.DeclareLocal(typeof(CpuState).MakeByRefType());
        _rtlb = il.DeclareLocal(typeof(TlbEntry).MakeByRefType());
        _wtlb = il.DeclareLocal(typeof(TlbEntry).MakeByRefType());
        _entry = il.DeclareLocal(typeof(TlbEntry).MakeByRefType());
        _lin = il.DeclareLocal(typeof(ulong));
        _val = il.DeclareLocal(typeof(ulong));
        _tmp = il.DeclareLocal(typeof(ulong));
        _fa = il.DeclareLocal(typeof(ulong));
        _fb = il.DeclareLocal(typeof(ulong));
        _fr = il.DeclareLocal(typeof(ulong));
        _fcf = il.DeclareLocal(typeof(ulong));
        _ta = il.DeclareLocal(typeof(ulong));
        _tb = il.DeclareLocal(typeof(ulong));
        _tc = il.DeclareLocal(typeof(ulong));
        _rc = il.DeclareLocal(typeof(long));
    }

    /// <summary>
    /// The IL stream the probe emission starts with, per guest instruction: about what the methods of a Linux boot take
    /// (about 70 bytes); a larger method grows its stream. (An estimate of twice that allocated a third of a boot's
    /// managed memory, and collections of it paused every thread.)
    /// </summary>
    private const int ProbeIlPerInstruction = 80;

    /// <summary>Compiles <paramref name="b"/>, or returns null when no op of it would run inline (compiling would gain nothing).</summary>
    public static CompiledBlock? Compile(Block b) => Compile(b, out _);

    /// <summary>As <see cref="Compile(Block)"/>, with the size of the method's IL in <paramref name="ilBytes"/> (0 when nothing was compiled).</summary>
    public static CompiledBlock? Compile(Block b, out int ilBytes, bool inlineLinks = false)
    {
        ilBytes = 0;
        var ops = b.Ops;
        if (b.Count == 0 || ops.Length < b.Count)
        {
            return null;
        }

        bool any = false;
        for (int i = 0; i < b.Count; i++)
        {
            any |= IsInline(b, i);
        }

        if (!any)
        {
            return null;
        }

        var speculated = new Dictionary<Block, Block>(ReferenceEqualityComparer.Instance);
        var region = Regions && (inlineLinks || !InPublishedRegion(b)) ? FormRegion(b, speculated) : [b];
        int count;
        BlockCompiler probe;
        while (true)
        {
            count = 0;
            foreach (var r in region)
            {
                count += r.Count;
            }

            // The method is bound to the region's blocks (its first argument), so its code reaches them as constants.
            // A first emission (into a method that is never compiled; IL emission is a small part of the cost) finds
            // the registers the method writes, so the real one writes back only those.
            probe = new BlockCompiler(region, speculated, NewMethod(b).GetILGenerator(256 + (count * ProbeIlPerInstruction)), writeBack: 0xFFFF, inlineLinks);
            probe.Emit();
            if (region.Length == 1 || probe._il.ILOffset <= MaxMethodIl)
            {
                break;
            }

            // Too large for the .NET JIT to optimise: keep the blocks formed first (the root and those nearest it).
            region = LoopsBackToRoot([.. region[..(region.Length / 2)]], speculated);
        }

        var dm = NewMethod(b);

        // The method writes back no more registers than the probe, so its IL is about the probe's size or less (a stream grows
        // when needed).
        var il = dm.GetILGenerator(probe._il.ILOffset);
        var method = new BlockCompiler(region, speculated, il, probe._written, inlineLinks, probe._tailUses, probe._tlbUsed);
        method.Emit();
        if ((method._tlbUsed & ~probe._tlbUsed) != 0)
        {
            // Never expected (the two emissions make the same accesses); the block stays with the interpreter.
            throw new InvalidOperationException("The method uses a TLB its probe emission did not.");
        }

        ilBytes = il.ILOffset;
        return (CompiledBlock)dm.CreateDelegate(typeof(CompiledBlock), region);
    }

    /// <summary>
    /// Whether a published region other than <paramref name="b"/>'s own holds it (<see cref="Block.CoveredBy"/>, still
    /// valid and compiled to a region with it). Such a block is compiled alone the first time, not as the root of a
    /// region of its own: a loop's blocks turn hot together, and each would otherwise be compiled as the root of much
    /// the same region (in a Linux boot, about a hundred such regions took an eighth of the compiler's time). Control
    /// that enters the loop at such a block chains from its method to the region's root, and stays in the region's
    /// code from there. A block that keeps leaving through slow exits is compiled again at its promotion, and then
    /// as a region's root. <c>VIRT_INTERPRETER_JIT_MEMBERS_ALONE=0</c> compiles it as a root at once, for comparison.
    /// </summary>
    private static bool InPublishedRegion(Block b) =>
        MembersAlone && b.CoveredBy is { } root && Volatile.Read(ref root.Valid)
        && Volatile.Read(ref root.Compiled)?.Target is Block[] { Length: > 1 } region && Array.IndexOf(region, b) > 0;

    private static readonly bool MembersAlone = Environment.GetEnvironmentVariable("VIRT_INTERPRETER_JIT_MEMBERS_ALONE") != "0";

    private static DynamicMethod NewMethod(Block b) =>
        new($"guest_{b.Lin:x}", typeof(void), [typeof(Block[]), typeof(InterpreterVcpu), typeof(Block)], typeof(InterpreterVcpu), skipVisibility: true);

    /// <summary>Regions of several blocks are formed (<c>VIRT_INTERPRETER_JIT_REGIONS=0</c> compiles blocks one by one).</summary>
    private static readonly bool Regions = Environment.GetEnvironmentVariable("VIRT_INTERPRETER_JIT_REGIONS") != "0";

    /// <summary>Blocks in one region at most.</summary>
    internal const int MaxRegionBlocks = 16;

    /// <summary>Instructions in one region at most.</summary>
    internal const int MaxRegionInstructions = 512;

    /// <summary>
    /// Bytes of IL in a region's method at most. Past its limits (IL instructions, local references, basic blocks) the
    /// .NET JIT compiles a method without optimisation ("switched to MinOpts": every guest register in a stack slot),
    /// and a boot met one such region of 47 KB of IL among its hottest code; regions of up to 29 KB were still
    /// optimised. A region over this size is cut down to the blocks formed first until it fits (a single block always
    /// stays whole).
    /// </summary>
    internal const int MaxMethodIl = 24 * 1024;

    /// <summary>
    /// The region rooted at <paramref name="root"/>: the blocks its exits were seen to lead to (the links the run
    /// loop records), breadth first, that lie in the same linear and physical page, were decoded in the same mode and
    /// run wholly inline. Within one page, an exit to the start RIP of a region block leads to that very block while
    /// the root runs (the root's page is mapped as when it was looked up, and a write to the page invalidates all its
    /// blocks, the root included), so the region's code branches there directly.
    /// </summary>
    /// <remarks>
    /// A computed target (RET, CALL through a register or memory) is followed too: its block is the one its exit
    /// was last linked to, entered in <paramref name="speculated"/> as that exit's expected block. The region's code
    /// compares the target it computes with that block's start and branches there when they are equal, and leaves as
    /// before otherwise, so a return to the call site it usually returns to (a function and its callers in one page)
    /// stays in the method.
    /// </remarks>
    private static Block[] FormRegion(Block root, Dictionary<Block, Block> speculated)
    {
        // A self-loop compiles better alone (its flags stay in locals from one iteration to the next).
        // (A block whose instruction runs into the next page is kept under both pages; regions lie in one.)
        if (!AllInline(root) || IsSelfLoop(root) || root.Straddles)
        {
            return [root];
        }

        var region = new List<Block> { root };
        var starts = new HashSet<ulong> { OpStart(in root.Ops[0]) };
        int instructions = root.Count;
        for (int k = 0; k < region.Count && region.Count < MaxRegionBlocks; k++)
        {
            var x = region[k];
            ref Op last = ref x.Ops[x.Count - 1];
            for (int slot = 0; slot < 2; slot++)
            {
                var y = slot == 0 ? x.Link0 : x.Link1;
                bool computed = ExpectedTargets && slot == 0 && IsComputedExit(in last);
                if (y == null || y.Count == 0 || y.Ops.Length < y.Count)
                {
                    continue;
                }

                ulong expected = computed ? OpStart(in y.Ops[0]) : slot == 0 ? last.Target : last.Next;
                bool fits = SamePageAndMode(root, y, expected);
                if (computed && fits)
                {
                    // Expected whether the block is taken in below or already was (a loop back to an earlier block).
                    speculated[x] = y;
                }

                bool exitFits = slot == 0
                    ? last.Inline is InlineOp.Jcc or InlineOp.Jmp or InlineOp.Call || computed
                    : last.Inline is not (InlineOp.Jmp or InlineOp.Call or InlineOp.Ret or InlineOp.CallInd);
                if (!exitFits || !fits || starts.Contains(expected) || instructions + y.Count > MaxRegionInstructions
                    || region.Count >= MaxRegionBlocks)
                {
                    continue;
                }

                region.Add(y);
                starts.Add(expected);
                instructions += y.Count;
            }
        }

        return LoopsBackToRoot(region, speculated);
    }

    /// <summary>Regions follow computed exits to their expected targets (<c>VIRT_INTERPRETER_JIT_EXPECTED_TARGETS=0</c> ends them there, for comparison).</summary>
    private static readonly bool ExpectedTargets = Environment.GetEnvironmentVariable("VIRT_INTERPRETER_JIT_EXPECTED_TARGETS") != "0";

    /// <summary>Whether <paramref name="last"/>, a block's last op, leaves for a target it computes (RET, CALL through a register or memory).</summary>
    internal static bool IsComputedExit(in Op last) => last.Inline is InlineOp.Ret or InlineOp.CallInd;

    private static bool IsSelfLoop(Block b)
    {
        ref Op last = ref b.Ops[b.Count - 1];
        return last.Inline is InlineOp.Jcc or InlineOp.Jmp && last.Target == OpStart(in b.Ops[0]);
    }

    /// <summary>The root and the candidates from which the root is reached again through candidates (the loop around the root; computed exits through their expected targets).</summary>
    private static Block[] LoopsBackToRoot(List<Block> candidates, Dictionary<Block, Block> speculated)
    {
        var starts = new ulong[candidates.Count];
        for (int k = 0; k < candidates.Count; k++)
        {
            starts[k] = OpStart(in candidates[k].Ops[0]);
        }

        var reaches = new bool[candidates.Count];
        reaches[0] = true;
        for (bool changed = true; changed;)
        {
            changed = false;
            for (int k = 1; k < candidates.Count; k++)
            {
                if (reaches[k])
                {
                    continue;
                }

                foreach (ulong rip in Successors(candidates[k], speculated))
                {
                    if (Array.IndexOf(starts, rip) is var t && t >= 0 && reaches[t])
                    {
                        reaches[k] = true;
                        changed = true;
                        break;
                    }
                }
            }
        }

        var region = new List<Block>();
        for (int k = 0; k < candidates.Count; k++)
        {
            if (reaches[k])
            {
                region.Add(candidates[k]);
            }
        }

        return [.. region];
    }

    /// <summary>Whether <paramref name="y"/> is a valid block starting at <paramref name="start"/>, in <paramref name="root"/>'s pages and mode, that runs wholly inline.</summary>
    private static bool SamePageAndMode(Block root, Block y, ulong start) =>
        y.Valid && !y.Straddles && y.Count > 0 && y.Ops.Length >= y.Count
        && y.ModeKey == root.ModeKey && y.CsBase == root.CsBase && y.PhysPage == root.PhysPage
        && (y.Lin >> 12) == (root.Lin >> 12) && OpStart(in y.Ops[0]) == start && AllInline(y) && !IsSelfLoop(y);

    /// <summary>Whether every op of <paramref name="b"/> runs inline and none is a form <see cref="IsHandlerForm"/> names: what a region's blocks must be.</summary>
    private static bool AllInline(Block b)
    {
        for (int i = 0; i < b.Count; i++)
        {
            if (!IsInline(b, i) || IsHandlerForm(in b.Ops[i]))
            {
                return false;
            }
        }

        return true;
    }

    /// <summary>
    /// The forms BlockCompiler.Handlers.cs compiles (which the interpreter runs through handlers). A block with one is
    /// compiled alone, as it was while they were interpreter calls, and is not taken into a region: in Linux boots,
    /// regions that took them in cost the compiler thread more time with no gain seen on the vCPU thread, and several of
    /// them leave the flags in the CPU state (PUSHF, BT, shifts by CL), which a region's flag locals cannot carry. CALL
    /// through a register or memory is compiled there too but is not one of them: it leaves the flags alone, and a region
    /// follows it to the function it expects (<see cref="FormRegion"/>).
    /// </summary>
    private static bool IsHandlerForm(in Op op) =>
        op.Inline is InlineOp.NegNot or InlineOp.Xchg or InlineOp.Pushf or InlineOp.Bswap or InlineOp.AccExtend or InlineOp.MovFromSreg
            or InlineOp.Bt or InlineOp.Cmpxchg or InlineOp.Xadd
        || (op.Inline == InlineOp.Shift && op.K1 == OpKindX.Reg);

    private static int ComputeGprOffset()
    {
        var state = new CpuState();
        return (int)System.Runtime.CompilerServices.Unsafe.ByteOffset(
            ref System.Runtime.CompilerServices.Unsafe.As<CpuState, byte>(ref state),
            ref System.Runtime.CompilerServices.Unsafe.As<ulong, byte>(ref state.Gpr[0]));
    }

    private static FieldInfo Field(Type t, string name) =>
        t.GetField(name, Any) ?? throw new MissingFieldException(t.Name, name);

    private static MethodInfo Method(string name) =>
        typeof(InterpreterVcpu).GetMethod(name, Any) ?? throw new MissingMethodException(nameof(InterpreterVcpu), name);

    private static ulong Mask(int size) => size >= 8 ? ulong.MaxValue : (1UL << (size * 8)) - 1;

    private static bool IsAluInlineSub(byte sub) => sub is Translator.AluAdd or Translator.AluOr or Translator.AluAnd
        or Translator.AluSub or Translator.AluXor or Translator.AluCmp or Translator.AluTest or Translator.AluAdc or Translator.AluSbb;

    /// <summary>ADC and SBB: they read the carry as well as setting the flags.</summary>
    private static bool IsCarryIn(in Op op) => op.Sub is Translator.AluAdc or Translator.AluSbb;

    private static bool MemOk(in Op op) => op.AddrSize is 8 or 4 or 2 && op.Seg < 6 && op.Seg != CpuState.SegCs; // CS operands: the interpreter refuses writes

    /// <summary>Whether the compiled code runs <paramref name="op"/> itself (else it calls the interpreter for it).</summary>
    [System.Diagnostics.CodeAnalysis.SuppressMessage("Maintainability", "CA1502:Avoid excessive complexity", Justification = "One case per inline form, each with the operand shapes the emitter handles.")]
    private static bool IsInline(in Op op, int bitness, bool last)
    {
        _ = bitness;
        switch (op.Inline)
        {
            case InlineOp.Nop:
                return true;
            case InlineOp.AluRR:
            case InlineOp.AluRI:
                return IsAluInlineSub(op.Sub) && op.Size is 1 or 2 or 4 or 8;
            case InlineOp.AluRR64:
            case InlineOp.AluRI64:
                return IsAluInlineSub(op.Sub);
            case InlineOp.Alu:
                return IsAluInlineSub(op.Sub) && op.Size is 1 or 2 or 4 or 8 && OperandsOk(in op);
            case InlineOp.IncDecR64:
                return true;
            case InlineOp.IncDec:
                return op.Size is 1 or 2 or 4 or 8 && (op.K0 == OpKindX.Reg || (op.K0 == OpKindX.Mem && MemOk(in op)));
            case InlineOp.MovRR:
            case InlineOp.MovRI:
                return op.Size is 1 or 2 or 4 or 8;
            case InlineOp.MovRM:
            case InlineOp.MovMR:
                return op.Size is 1 or 2 or 4 or 8 && MemOk(in op);
            case InlineOp.Mov:
                return op.Size is 1 or 2 or 4 or 8 && OperandsOk(in op) && op.K0 is OpKindX.Reg or OpKindX.Mem;
            case InlineOp.Lea:
                return op.Size is 2 or 4 or 8 && op.AddrSize is 2 or 4 or 8;
            case InlineOp.Movzx:
            case InlineOp.Movsx:
                return op.Size is 1 or 2 or 4 or 8 && op.Size2 is 1 or 2 or 4 or 8 && op.K0 == OpKindX.Reg
                    && (op.K1 == OpKindX.Reg || (op.K1 == OpKindX.Mem && MemOk(in op)));
            case InlineOp.Jcc:
            case InlineOp.Jmp:
                return last;
            case InlineOp.Push:
                return bitness == 64 && op.Size is 8 or 2 && op.K0 is OpKindX.Reg or OpKindX.Imm;
            case InlineOp.Pop:
                return bitness == 64 && op.Size is 8 or 2 && op.K0 == OpKindX.Reg;
            case InlineOp.Call:
            case InlineOp.Ret:
                return last && bitness == 64 && op.Size2 == 8;
            case InlineOp.CallInd:
                return last && bitness == 64 && op.Size2 == 8 && op.Size == 8 && (op.K0 == OpKindX.Reg || (op.K0 == OpKindX.Mem && MemOk(in op)));
            case InlineOp.MulDiv:
                return op.Size is 1 or 2 or 4 or 8 && (op.K0 == OpKindX.Reg || (op.K0 == OpKindX.Mem && MemOk(in op)));
            case InlineOp.Cmovcc:
            case InlineOp.Imul2:
                return op.Size is 2 or 4 or 8 && op.K0 == OpKindX.Reg && (op.K1 == OpKindX.Reg || (op.K1 == OpKindX.Mem && MemOk(in op)));
            case InlineOp.Setcc:
                return op.Size == 1 && (op.K0 == OpKindX.Reg || (op.K0 == OpKindX.Mem && MemOk(in op)));
            case InlineOp.Movs:
            case InlineOp.Stos:
                return IsRepString(in op, bitness);
            case InlineOp.Shift:
                // SHL/SAL/SHR/SAR, and ROL/ROR (which change only CF and OF), by an immediate count; SHL/SAL/SHR/SAR by CL.
                return ((op.Sub is 0 or 1 or 4 or 5 or 6 or 7 && op.K1 == OpKindX.Imm && ShiftCount(in op) is var count && count != 0 && count < op.Size * 8)
                        || (op.Sub is 4 or 5 or 6 or 7 && op.K1 == OpKindX.Reg && op.R1 == 1))
                    && op.Size is 1 or 2 or 4 or 8 && (op.K0 == OpKindX.Reg || (op.K0 == OpKindX.Mem && MemOk(in op)));
            case InlineOp.NegNot:
                return op.Size is 1 or 2 or 4 or 8 && (op.K0 == OpKindX.Reg || (op.K0 == OpKindX.Mem && MemOk(in op)));
            case InlineOp.Xchg:
                return op.Size is 1 or 2 or 4 or 8 && op.K1 == OpKindX.Reg && (op.K0 == OpKindX.Reg || (op.K0 == OpKindX.Mem && MemOk(in op)));
            case InlineOp.Pushf:
                return bitness == 64 && op.Size is 8 or 2;
            case InlineOp.Bswap:
                return op.Size is 2 or 4 or 8 && op.K0 == OpKindX.Reg;
            case InlineOp.AccExtend:
                return op.Size is 2 or 4 or 8;
            case InlineOp.Bt:
                // By an immediate or a register; of memory by a register (a bit string) only BT, which does not write.
                return op.Size is 2 or 4 or 8 && ((op.K0 == OpKindX.Reg && op.K1 is OpKindX.Imm or OpKindX.Reg)
                    || (op.K0 == OpKindX.Mem && MemOk(in op) && (op.K1 == OpKindX.Imm || (op.K1 == OpKindX.Reg && op.Sub == 0))));
            case InlineOp.Cmpxchg:
            case InlineOp.Xadd:
                return op.Size is 1 or 2 or 4 or 8 && op.K1 == OpKindX.Reg && (op.K0 == OpKindX.Reg || (op.K0 == OpKindX.Mem && MemOk(in op)));
            case InlineOp.MovFromSreg:
                return op.Sub < 6 && ((op.K0 == OpKindX.Reg && op.Size is 2 or 4 or 8) || (op.K0 == OpKindX.Mem && op.Size == 2 && MemOk(in op)));
            default:
                return false;
        }
    }

    /// <summary>REP MOVS or REP STOS with 64-bit addresses in 64-bit code: a fast path in compiled code, the interpreter for the rest.</summary>
    private static bool IsRepString(in Op op, int bitness) =>
        RepStrings && op.Inline is InlineOp.Movs or InlineOp.Stos && bitness == 64 && op.AddrSize == 8 && op.Seg < 6
        && (op.Pfx & (Pfx.Rep | Pfx.Repne)) != 0 && op.Size is 1 or 2 or 4 or 8;

    /// <summary>REP MOVS/STOS have a fast path in compiled code (<c>VIRT_INTERPRETER_JIT_STRINGS=0</c> hands them to the interpreter, for comparison).</summary>
    private static readonly bool RepStrings = Environment.GetEnvironmentVariable("VIRT_INTERPRETER_JIT_STRINGS") != "0";

    /// <summary>The count of a shift by an immediate, masked as the hardware masks it.</summary>
    private static int ShiftCount(in Op op) => (int)(op.Imm & (op.Size == 8 ? 0x3FUL : 0x1FUL));

    private static bool UsesStack(in Op op) => op.Inline is InlineOp.Push or InlineOp.Pop or InlineOp.Call or InlineOp.Ret or InlineOp.Pushf or InlineOp.CallInd;

    private static bool OperandsOk(in Op op)
    {
        bool mem = op.K0 == OpKindX.Mem || op.K1 == OpKindX.Mem;
        return (op.K0 is OpKindX.Reg or OpKindX.Mem) && (op.K1 is OpKindX.Reg or OpKindX.Mem or OpKindX.Imm) && (!mem || MemOk(in op))
            && !(op.K0 == OpKindX.Mem && op.K1 == OpKindX.Mem);
    }

    private static ulong OpStart(in Op op) => op.Next - op.Len;

    // ---- Registers -----------------------------------------------------------------------------------

    private void Use(int r)
    {
        if (r >= 16)
        {
            r -= 16;
        }

        _reg[r] ??= _il.DeclareLocal(typeof(ulong));
    }

    private void UseOperandRegs(in Op op, bool k0, bool k1)
    {
        if (k0 && op.K0 == OpKindX.Reg)
        {
            Use(RegOf(op.R0, op.Size));
        }

        if (k1 && op.K1 == OpKindX.Reg)
        {
            Use(RegOf(op.R1, op.Inline is InlineOp.Movzx or InlineOp.Movsx ? op.Size2 : op.Size));
        }

        if (op.K0 == OpKindX.Mem || op.K1 == OpKindX.Mem || op.Inline == InlineOp.Lea)
        {
            if (op.Base != 0xFF)
            {
                Use(op.Base);
            }

            if (op.Index != 0xFF)
            {
                Use(op.Index);
            }
        }
    }

    private static int RegOf(int r, int size) => size == 1 && r >= 16 ? r - 16 : r;

    /// <summary>Pushes the int32 <paramref name="v"/> in its shortest encoding.</summary>
    private void EmitI4(int v)
    {
        switch (v)
        {
            case -1: _il.Emit(OpCodes.Ldc_I4_M1); return;
            case 0: _il.Emit(OpCodes.Ldc_I4_0); return;
            case 1: _il.Emit(OpCodes.Ldc_I4_1); return;
            case 2: _il.Emit(OpCodes.Ldc_I4_2); return;
            case 3: _il.Emit(OpCodes.Ldc_I4_3); return;
            case 4: _il.Emit(OpCodes.Ldc_I4_4); return;
            case 5: _il.Emit(OpCodes.Ldc_I4_5); return;
            case 6: _il.Emit(OpCodes.Ldc_I4_6); return;
            case 7: _il.Emit(OpCodes.Ldc_I4_7); return;
            case 8: _il.Emit(OpCodes.Ldc_I4_8); return;
            default: break;
        }

        if (v is >= sbyte.MinValue and <= sbyte.MaxValue)
        {
            _il.Emit(OpCodes.Ldc_I4_S, (sbyte)v);
        }
        else
        {
            _il.Emit(OpCodes.Ldc_I4, v);
        }
    }

    /// <summary>Pushes the int64 <paramref name="v"/>: a sign-extended int32 where it fits (up to 7 bytes of IL fewer than <c>ldc.i8</c>).</summary>
    private void EmitI8(long v)
    {
        if (v is >= int.MinValue and <= int.MaxValue)
        {
            EmitI4((int)v);
            _il.Emit(OpCodes.Conv_I8);
        }
        else
        {
            _il.Emit(OpCodes.Ldc_I8, v);
        }
    }

    private void LoadGprAddress(int r)
    {
        // From the CPU state reference rather than a reference of its own: one register fewer for the .NET JIT to keep.
        _il.Emit(OpCodes.Ldloc, _cpu);
        int offset = GprOffset + (r * 8);
        if (offset != 0)
        {
            EmitI4(offset);
            _il.Emit(OpCodes.Add);
        }
    }

    private void LoadAllRegs()
    {
        for (int r = 0; r < 16; r++)
        {
            if (_reg[r] is { } l)
            {
                LoadGprAddress(r);
                _il.Emit(OpCodes.Ldind_I8);
                _il.Emit(OpCodes.Stloc, l);
            }
        }
    }

    private void WriteBackRegs()
    {
        for (int r = 0; r < 16; r++)
        {
            if (_reg[r] is { } l && (_writeBack & (1 << r)) != 0)
            {
                LoadGprAddress(r);
                _il.Emit(OpCodes.Ldloc, l);
                _il.Emit(OpCodes.Stind_I8);
            }
        }
    }

    /// <summary>Stores the value on the stack into the local of register <paramref name="r"/>, which the method then writes back.</summary>
    private void StoreReg(int r)
    {
        _il.Emit(OpCodes.Stloc, _reg[r]!);
        _written |= 1 << r;
    }

    /// <summary>Pushes register <paramref name="r"/> of <paramref name="size"/> bytes, zero-extended to 64 bits.</summary>
    private void GetReg(int r, int size)
    {
        if (size == 1 && r >= 16)
        {
            _il.Emit(OpCodes.Ldloc, _reg[r - 16]!);
            _il.Emit(OpCodes.Ldc_I4_8);
            _il.Emit(OpCodes.Shr_Un);
            _il.Emit(OpCodes.Conv_U1);
            _il.Emit(OpCodes.Conv_U8);
            return;
        }

        _il.Emit(OpCodes.Ldloc, _reg[r]!);
        switch (size)
        {
            case 4: _il.Emit(OpCodes.Conv_U4); _il.Emit(OpCodes.Conv_U8); break;
            case 2: _il.Emit(OpCodes.Conv_U2); _il.Emit(OpCodes.Conv_U8); break;
            case 1: _il.Emit(OpCodes.Conv_U1); _il.Emit(OpCodes.Conv_U8); break;
            default: break;
        }
    }

    /// <summary>Stores the value on the stack into register <paramref name="r"/> as an x86 write of <paramref name="size"/> bytes does.</summary>
    private void SetReg(int r, int size)
    {
        if (size == 8)
        {
            StoreReg(r);
            return;
        }

        if (size == 4)
        {
            _il.Emit(OpCodes.Conv_U4);
            _il.Emit(OpCodes.Conv_U8);
            StoreReg(r);
            return;
        }

        _il.Emit(OpCodes.Stloc, _tmp);
        int full = RegOf(r, size);
        var l = _reg[full]!;
        _il.Emit(OpCodes.Ldloc, l);
        if (size == 2)
        {
            EmitI8(unchecked((long)~0xFFFFUL));
            _il.Emit(OpCodes.And);
            _il.Emit(OpCodes.Ldloc, _tmp);
            _il.Emit(OpCodes.Conv_U2);
            _il.Emit(OpCodes.Conv_U8);
        }
        else if (r < 16)
        {
            EmitI8(unchecked((long)~0xFFUL));
            _il.Emit(OpCodes.And);
            _il.Emit(OpCodes.Ldloc, _tmp);
            _il.Emit(OpCodes.Conv_U1);
            _il.Emit(OpCodes.Conv_U8);
        }
        else
        {
            EmitI8(unchecked((long)~0xFF00UL));
            _il.Emit(OpCodes.And);
            _il.Emit(OpCodes.Ldloc, _tmp);
            _il.Emit(OpCodes.Conv_U1);
            _il.Emit(OpCodes.Conv_U8);
            _il.Emit(OpCodes.Ldc_I4_8);
            _il.Emit(OpCodes.Shl);
        }

        _il.Emit(OpCodes.Or);
        StoreReg(full);
    }

    // ---- Flags ---------------------------------------------------------------------------------------

    private void SetFlags(int kind, int size)
    {
        _flagKind = kind;
        _flagSize = size;
        _cfKind = Unknown;
        _cfSize = 0;
        _fbImm = null;
        _flagsDirty = true;
    }

    /// <summary>Pushes the second flag operand (<see cref="_fb"/>, or the constant it stands for).</summary>
    private void EmitLoadFb()
    {
        if (_fbImm is long b)
        {
            EmitI8(b);
        }
        else
        {
            _il.Emit(OpCodes.Ldloc, _fb);
        }
    }

    private void StoreCpuField(FieldInfo f, LocalBuilder value)
    {
        _il.Emit(OpCodes.Ldloc, _cpu);
        _il.Emit(OpCodes.Ldloc, value);
        _il.Emit(OpCodes.Stfld, f);
    }

    private void LoadCpuField(FieldInfo f, LocalBuilder into)
    {
        _il.Emit(OpCodes.Ldloc, _cpu);
        _il.Emit(OpCodes.Ldfld, f);
        _il.Emit(OpCodes.Stloc, into);
    }

    private void StoreCpuField(FieldInfo f, int value)
    {
        _il.Emit(OpCodes.Ldloc, _cpu);
        EmitI4(value);
        _il.Emit(OpCodes.Stfld, f);
    }

    /// <summary>Stores the pending flags into the CPU state and from then on takes them from there (for code that leaves them in the state: handler forms, interpreter calls).</summary>
    private void EmitFlagsToState()
    {
        EmitFlagStore();
        Flags = FlagState.InState;
        _flagsDirty = false;
    }

    /// <summary>Stores the pending flags into the lazy-flag fields of <see cref="CpuState"/> (no change to what the compiler knows).</summary>
    private void EmitFlagStore()
    {
        if (!_flagsDirty || _flagKind == Unknown)
        {
            return;
        }

        StoreCpuField(LzOpField, _flagKind);
        StoreCpuField(LzSizeField, _flagSize);
        if (_flagKind is LzInc or LzDec)
        {
            // INC/DEC keep only the result: the operand is the result minus (INC) or plus (DEC) one, wrapped to the size.
            _il.Emit(OpCodes.Ldloc, _cpu);
            _il.Emit(OpCodes.Ldloc, _fr);
            _il.Emit(OpCodes.Ldc_I4_1);
            _il.Emit(OpCodes.Conv_U8);
            _il.Emit(_flagKind == LzInc ? OpCodes.Sub : OpCodes.Add);
            if (_flagSize < 8)
            {
                EmitI8(unchecked((long)Mask(_flagSize)));
                _il.Emit(OpCodes.And);
            }

            _il.Emit(OpCodes.Stfld, LzAField);
            _il.Emit(OpCodes.Ldloc, _cpu);
            _il.Emit(OpCodes.Ldc_I4_1);
            _il.Emit(OpCodes.Conv_U8);
            _il.Emit(OpCodes.Stfld, LzBField);
        }
        else
        {
            StoreCpuField(LzAField, _fa);
            _il.Emit(OpCodes.Ldloc, _cpu);
            EmitLoadFb();
            _il.Emit(OpCodes.Stfld, LzBField);
        }

        StoreCpuField(LzRField, _fr);
        if (_flagKind is LzInc or LzDec)
        {
            _il.Emit(OpCodes.Ldloc, _cpu);
            EmitIncDecCarry();
            _il.Emit(OpCodes.Stfld, LzCfField);
        }
        else if (_flagKind is LzShift or LzAdc or LzSbb)
        {
            StoreCpuField(LzCfField, _fcf);
        }
    }

    /// <summary>Loads the pending flag operands back from the lazy-flag fields <see cref="EmitFlagStore"/> writes (see <see cref="EmitReload"/>).</summary>
    private void EmitFlagLoad()
    {
        if (_flagKind == Unknown)
        {
            return;
        }

        if (_flagKind is LzInc or LzDec && _cfKind != Unknown)
        {
            // A carry kept from the producer before INC/DEC: operands that give the stored carry (ADD: all ones plus
            // the carry; SUB: 0 minus the carry), as nothing but that carry reads them while the flags are INC's/DEC's.
            LoadCpuField(LzRField, _fr);
            LoadCpuField(LzCfField, _tc);
            if (_fbImm == null)
            {
                _il.Emit(OpCodes.Ldloc, _tc);
                _il.Emit(OpCodes.Stloc, _fb);
            }

            // ADD: all ones with a carry (the second operand, 1 or a constant that is not 0, then wraps), else 0.
            // SUB: 0 with a carry (below the second operand, 1 or such a constant), else all ones.
            _il.Emit(OpCodes.Ldc_I4_0);
            _il.Emit(OpCodes.Conv_U8);
            _il.Emit(OpCodes.Ldloc, _tc);
            _il.Emit(OpCodes.Sub);
            if (_cfKind == LzSub)
            {
                _il.Emit(OpCodes.Not);
            }

            EmitI8(unchecked((long)Mask(_cfSize)));
            _il.Emit(OpCodes.And);
            _il.Emit(OpCodes.Stloc, _fa);
            return;
        }

        var fields = _flagKind switch
        {
            LzInc or LzDec => (FieldInfo[])[LzRField, LzCfField],
            LzShift or LzAdc or LzSbb => [LzAField, LzBField, LzRField, LzCfField],
            _ => [LzAField, LzBField, LzRField],
        };
        foreach (var f in fields)
        {
            if (f == LzBField && _fbImm != null)
            {
                continue;
            }

            LoadCpuField(f, f == LzAField ? _fa : f == LzBField ? _fb : f == LzRField ? _fr : _fcf);
        }
    }

    /// <summary>
    /// Writes registers and flags back: after this the CPU state is what the interpreter would hold. Where the probe
    /// saw two or more syncs with the same flags in the same block, this is a branch to their shared code, which
    /// returns to the continuation through a switch.
    /// </summary>
    private void EmitSync(int opIndex)
    {
        if (UseTail(TailSync, out var tail))
        {
            var cont = _il.DefineLabel();
            EmitI4(opIndex);
            _il.Emit(OpCodes.Stloc, _syncIndex ??= _il.DeclareLocal(typeof(int)));
            EmitI4(tail.Continuations.Count);
            _il.Emit(OpCodes.Stloc, _syncCont ??= _il.DeclareLocal(typeof(int)));
            _il.Emit(OpCodes.Br, tail.Label);
            tail.Continuations.Add(cont);
            _il.MarkLabel(cont);
            return;
        }

        EmitSyncCode(opIndex, null);
    }

    private void EmitSyncCode(int opIndex, LocalBuilder? opIndexLocal)
    {
        EmitWriteBack();

        // (A fault restarts at op opIndex of the block being run: in a region, the slow path's call names the block,
        // see EmitSlowBlock.)
        _il.Emit(OpCodes.Ldarg_1);
        if (opIndexLocal != null)
        {
            _il.Emit(OpCodes.Ldloc, opIndexLocal);
        }
        else
        {
            EmitI4(opIndex);
        }

        _il.Emit(OpCodes.Stfld, OpIndexField);
    }

    // ---- Shared tails --------------------------------------------------------------------------------
    //
    // The .NET JIT's time per method grows with its IL, and writing the state back (every written register, the flag
    // operands, the retired count) is most of an exit's or a slow path's IL. Exits and slow paths of a block that
    // leave with the same flags share one copy of that code at the end of the method: each sets its own values
    // (RIP and exit slot, or the op index and where to continue) in locals and branches there.

    private const int TailExit = 0, TailLeave = 1, TailSync = 2, TailStep = 3;

    /// <summary>
    /// What a shared tail is for: its kind (an exit that chains, one that returns, a slow path's sync), the block and the
    /// flags it stores. A class with its own equality rather than a record struct: dictionaries keyed by a struct of this
    /// assembly are generic code that no ReadyToRun image holds, so each process would compile about twenty
    /// dictionary and comparer methods for it when its first block is compiled; keyed by a class they run the
    /// framework's shared, precompiled code.
    /// </summary>
    internal sealed class TailKey(int kind, int block, FlagState flags) : IEquatable<TailKey>
    {
        public int Kind { get; } = kind;

        public int Block { get; } = block;

        public FlagState Flags { get; } = flags;

        public bool Equals(TailKey? other) => other is not null && Kind == other.Kind && Block == other.Block && Flags == other.Flags;

        public override bool Equals(object? obj) => Equals(obj as TailKey);

        public override int GetHashCode() => (((Kind * 31) + Block) * 31) + Flags.GetHashCode();
    }

    private sealed class Tail(TailKey key, Label label)
    {
        public TailKey Key { get; } = key;

        public Label Label { get; } = label;

        /// <summary>For a sync tail: where each user continues, by index.</summary>
        public List<Label> Continuations { get; } = [];
    }

    /// <summary>Uses of each tail key in this emission (the probe's tell the real emission which to share).</summary>
    private readonly Dictionary<TailKey, int> _tailUses = [];

    /// <summary>The probe's <see cref="_tailUses"/>: a key used twice or more gets a shared tail; null in the probe.</summary>
    private readonly Dictionary<TailKey, int>? _shared;
    private readonly Dictionary<TailKey, Tail> _tails = [];
    private readonly List<Tail> _tailOrder = [];
    private LocalBuilder? _exitRip, _exitSlot, _syncIndex, _syncCont;

    /// <summary>
    /// The method loops (a self-loop or a region): its exits and slow paths stay inline, as paths that join from a
    /// loop into shared code made the .NET JIT keep guest registers in memory across the loop (the 3-instruction loop
    /// ran about a quarter slower). Loops are a small part of the blocks compiled, so most of the IL saving stays.
    /// </summary>
    private bool _loops;

    /// <summary>
    /// Counts a use of the tail of <paramref name="kind"/> for the current block and flags; true (with the tail) when it
    /// is shared. A use whose flags no other use shares joins the tail that stores no flags when that tail has another
    /// user (see <see cref="UnmatchedUses"/>): it stores its flags here first, which is a few stores against a copy of
    /// the whole write-back.
    /// </summary>
    private bool UseTail(int kind, out Tail tail)
    {
        bool flags = _flagsDirty && _flagKind != Unknown;
        int block = kind == TailLeave ? 0 : _cur;
        var key = new TailKey(kind, block, flags ? Flags : FlagState.InState);
        _tailUses[key] = (_tailUses.TryGetValue(key, out int uses) ? uses : 0) + 1;
        if (_shared == null || _loops)
        {
            tail = null!;
            return false;
        }

        if (!_shared.TryGetValue(key, out int shared) || shared < 2)
        {
            if (UnmatchedUses(kind, block) < 2)
            {
                tail = null!;
                return false;
            }

            if (flags)
            {
                EmitFlagStore();
                key = new TailKey(key.Kind, key.Block, FlagState.InState);
            }
        }

        if (!_tails.TryGetValue(key, out tail!))
        {
            tail = new Tail(key, _il.DefineLabel());
            _tails[key] = tail;
            _tailOrder.Add(tail);
        }

        return true;
    }

    /// <summary>
    /// Uses (in the probe) of the tail of <paramref name="kind"/> for block <paramref name="block"/> that store no flags
    /// or whose flags no other use shares: the users of that kind's tail without flags.
    /// </summary>
    private int UnmatchedUses(int kind, int block)
    {
        _unmatched ??= [];
        int at = (kind * MaxRegionBlocks) + block;
        if (!_unmatched.TryGetValue(at, out int n))
        {
            foreach (var (k, uses) in _shared!)
            {
                if (k.Kind == kind && k.Block == block && (uses < 2 || k.Flags == FlagState.InState))
                {
                    n += uses;
                }
            }

            _unmatched[at] = n;
        }

        return n;
    }

    /// <summary>Per tail kind and block (kind times <see cref="MaxRegionBlocks"/> plus block), <see cref="UnmatchedUses"/>'s answer.</summary>
    private Dictionary<int, int>? _unmatched;

    /// <summary>The shared tails, after the method's body.</summary>
    private void EmitTails()
    {
        foreach (var tail in _tailOrder)
        {
            var key = tail.Key;
            _cur = key.Block;
            _ops = _region[_cur].Ops;
            Flags = key.Flags;
            _flagsDirty = _flagKind != Unknown;
            _il.MarkLabel(tail.Label);
            if (key.Kind == TailSync)
            {
                EmitSyncCode(0, _syncIndex);
                _il.Emit(OpCodes.Ldloc, _syncCont!);
                _il.Emit(OpCodes.Switch, [.. tail.Continuations]);

                // Not reached: every user set a continuation.
                _il.Emit(OpCodes.Ret);
                continue;
            }

            EmitWriteBack();
            EmitSetRip(_exitRip!);
            if (key.Kind == TailStep)
            {
                // An instruction the interpreter runs (see EmitFallback), the op index in _syncIndex.
                _il.Emit(OpCodes.Ldarg_1);
                _il.Emit(OpCodes.Ldarg_2);
                _il.Emit(OpCodes.Ldloc, _syncIndex!);
                _il.Emit(OpCodes.Call, StepMethod);
                _il.Emit(OpCodes.Conv_I8);
                _il.Emit(OpCodes.Stloc, _tmp);
                var leave = _il.DefineLabel();
                var go = _il.DefineLabel();
                _il.Emit(OpCodes.Ldloc, _tmp);
                _il.Emit(OpCodes.Brfalse, leave);
                _il.Emit(OpCodes.Ldarg_1);
                _il.Emit(OpCodes.Ldfld, StopField);
                _il.Emit(OpCodes.Brfalse, go);
                _il.MarkLabel(leave);
                _il.Emit(OpCodes.Ldarg_1);
                _il.Emit(OpCodes.Ldloc, _rc);
                _il.Emit(OpCodes.Ldloc, _tmp);
                _il.Emit(OpCodes.Add);
                _il.Emit(OpCodes.Ldloc, _syncIndex!);
                _il.Emit(OpCodes.Conv_I8);
                _il.Emit(OpCodes.Add);
                _il.Emit(OpCodes.Stfld, RetiredField);
                _il.Emit(OpCodes.Ret);
                _il.MarkLabel(go);
                LoadAllRegs();
                _il.Emit(OpCodes.Ldloc, _syncCont!);
                _il.Emit(OpCodes.Switch, [.. tail.Continuations]);
                _il.Emit(OpCodes.Ret);
            }
            else if (key.Kind == TailExit)
            {
                EmitChain(0, slotLocal: _exitSlot);
            }
            else
            {
                _il.Emit(OpCodes.Ret);
            }
        }
    }

    /// <summary>
    /// Leaves the method with RIP <paramref name="rip"/> (the retired count already in <see cref="_rc"/>): the state is
    /// written back and the method returns, or, when <paramref name="slot"/> is not negative, goes on through that exit's
    /// link (<see cref="EmitChain"/>).
    /// </summary>
    private void EmitLeave(ulong rip, int slot, bool synced = false)
    {
        if (UseTail(slot < 0 ? TailLeave : TailExit, out var tail))
        {
            EmitI8(unchecked((long)rip));
            _il.Emit(OpCodes.Stloc, _exitRip ??= _il.DeclareLocal(typeof(ulong)));
            if (slot >= 0)
            {
                _il.Emit(slot == 0 ? OpCodes.Ldc_I4_0 : OpCodes.Ldc_I4_1);
                _il.Emit(OpCodes.Stloc, _exitSlot ??= _il.DeclareLocal(typeof(int)));
            }

            _il.Emit(OpCodes.Br, tail.Label);
            return;
        }

        // (After a sync only the retired count and RIP are left to store.)
        EmitWriteBack(regsAndFlags: !synced);
        EmitSetRip(rip);
        if (slot >= 0)
        {
            EmitChain(slot);
        }
        else
        {
            _il.Emit(OpCodes.Ret);
        }
    }

    /// <summary>Pushes the carry flag (0 or 1) as a ulong.</summary>
    private void EmitCarry()
    {
        switch (_flagKind)
        {
            case LzAdd:
            case LzSub:
            case LzLogic:
                EmitCarryOf(_flagKind, _flagSize, sumInFr: true);
                break;
            case LzInc:
            case LzDec:
                EmitIncDecCarry();
                break;
            case LzShift:
                _il.Emit(OpCodes.Ldloc, _fcf);
                _il.Emit(OpCodes.Ldc_I4_1);
                _il.Emit(OpCodes.Conv_U8);
                _il.Emit(OpCodes.And);
                break;
            case LzAdc:
            case LzSbb:
                EmitCarryWithIn();
                _il.Emit(OpCodes.Conv_U8);
                break;
            default:
                EmitCallOut(() =>
                {
                    _il.Emit(OpCodes.Ldarg_1);
                    _il.Emit(OpCodes.Call, CarryMethod);
                    _il.Emit(OpCodes.Stloc, _tmp);
                });
                _il.Emit(OpCodes.Ldloc, _tmp);
                break;
        }
    }

    /// <summary>Pushes the carry of INC/DEC flags (0 or 1) as a ulong, from where <see cref="_cfKind"/> says it is.</summary>
    private void EmitIncDecCarry()
    {
        if (_cfKind == Unknown)
        {
            _il.Emit(OpCodes.Ldloc, _fcf);
            return;
        }

        // _fr holds INC's/DEC's result: an ADD's sum is formed again from its operands.
        EmitCarryOf(_cfKind, _cfSize, sumInFr: false);
    }

    /// <summary>
    /// Pushes the carry (a ulong 0 or 1) of an ADD of <paramref name="size"/> bytes (the sum below the first operand; the
    /// sum from <see cref="_fr"/> when <paramref name="sumInFr"/>, else formed again from the operands and wrapped), a
    /// SUB/CMP (the first operand below the second) or a logic operation (0), from the flag locals.
    /// </summary>
    private void EmitCarryOf(int kind, int size, bool sumInFr)
    {
        if (kind == LzLogic)
        {
            _il.Emit(OpCodes.Ldc_I4_0);
            _il.Emit(OpCodes.Conv_U8);
            return;
        }

        if (kind == LzAdd)
        {
            if (sumInFr)
            {
                _il.Emit(OpCodes.Ldloc, _fr);
            }
            else
            {
                _il.Emit(OpCodes.Ldloc, _fa);
                EmitLoadFb();
                _il.Emit(OpCodes.Add);
                EmitTruncate(size);
            }

            _il.Emit(OpCodes.Ldloc, _fa);
        }
        else
        {
            _il.Emit(OpCodes.Ldloc, _fa);
            EmitLoadFb();
        }

        _il.Emit(OpCodes.Clt_Un);
        _il.Emit(OpCodes.Conv_U8);
    }

    /// <summary>
    /// Pushes the carry out (an int32 0 or 1) of ADC/SBB flags: with a carry in, the sum at or below the first operand
    /// (ADC) or the first operand at or below the second (SBB); without, strictly below, as ADD and SUB.
    /// </summary>
    private void EmitCarryWithIn()
    {
        bool adc = _flagKind == LzAdc;
        if (adc)
        {
            _il.Emit(OpCodes.Ldloc, _fr);
            _il.Emit(OpCodes.Ldloc, _fa);
            _il.Emit(OpCodes.Clt_Un);
            _il.Emit(OpCodes.Ldloc, _fr);
            _il.Emit(OpCodes.Ldloc, _fa);
        }
        else
        {
            _il.Emit(OpCodes.Ldloc, _fa);
            EmitLoadFb();
            _il.Emit(OpCodes.Clt_Un);
            _il.Emit(OpCodes.Ldloc, _fa);
            EmitLoadFb();
        }

        _il.Emit(OpCodes.Ceq);
        _il.Emit(OpCodes.Ldloc, _fcf);
        _il.Emit(OpCodes.Conv_I4);
        _il.Emit(OpCodes.And);
        _il.Emit(OpCodes.Or);
    }

    private void SignExtend(LocalBuilder v, int size)
    {
        _il.Emit(OpCodes.Ldloc, v);
        SignExtendTop(size);
    }

    /// <summary>Sign-extends the value on the stack from <paramref name="size"/> bytes to 64 bits.</summary>
    private void SignExtendTop(int size)
    {
        switch (size)
        {
            case 1: _il.Emit(OpCodes.Conv_I1); _il.Emit(OpCodes.Conv_I8); break;
            case 2: _il.Emit(OpCodes.Conv_I2); _il.Emit(OpCodes.Conv_I8); break;
            case 4: _il.Emit(OpCodes.Conv_I4); _il.Emit(OpCodes.Conv_I8); break;
            default: break;
        }
    }

    private void EmitSignOfResult()
    {
        _il.Emit(OpCodes.Ldloc, _fr);
        EmitI8(unchecked((long)(1UL << ((_flagSize * 8) - 1))));
        _il.Emit(OpCodes.And);
        _il.Emit(OpCodes.Ldc_I4_0);
        _il.Emit(OpCodes.Conv_U8);
        _il.Emit(OpCodes.Cgt_Un);
    }

    /// <summary>Pushes 1 when flag <paramref name="bit"/> (CF or OF) is set in the shift-kind flags, else 0 (int32).</summary>
    private void EmitShiftFlagBit(ulong bit)
    {
        _il.Emit(OpCodes.Ldloc, _fcf);
        EmitI8((long)bit);
        _il.Emit(OpCodes.And);
        _il.Emit(OpCodes.Ldc_I4_0);
        _il.Emit(OpCodes.Conv_U8);
        _il.Emit(OpCodes.Cgt_Un);
    }

    private void EmitZeroResult()
    {
        _il.Emit(OpCodes.Ldloc, _fr);
        _il.Emit(OpCodes.Ldc_I4_0);
        _il.Emit(OpCodes.Conv_U8);
        _il.Emit(OpCodes.Ceq);
    }

    /// <summary>Pushes condition <paramref name="cc"/> (an int32, 0 or 1), straight from the operands where the producer is known.</summary>
    [System.Diagnostics.CodeAnalysis.SuppressMessage("Maintainability", "CA1502:Avoid excessive complexity", Justification = "One case per flag producer and condition the compiled code computes directly.")]
    private void EmitCondition(int cc)
    {
        int c = cc >> 1;
        bool direct = true;
        if (_flagKind != Unknown && c == 2)
        {
            EmitZeroResult();
        }
        else if (_flagKind != Unknown && c == 4)
        {
            EmitSignOfResult();
        }
        else if (_flagKind == LzSub && c is 1 or 3 or 6 or 7)
        {
            bool signed = c >= 6;
            if (signed)
            {
                SignExtend(_fa, _flagSize);
                EmitLoadFb();
                SignExtendTop(_flagSize);
            }
            else
            {
                _il.Emit(OpCodes.Ldloc, _fa);
                EmitLoadFb();
            }

            if (c is 1 or 6)
            {
                _il.Emit(signed ? OpCodes.Clt : OpCodes.Clt_Un);
            }
            else
            {
                // a <= b is !(a > b)
                _il.Emit(signed ? OpCodes.Cgt : OpCodes.Cgt_Un);
                _il.Emit(OpCodes.Ldc_I4_0);
                _il.Emit(OpCodes.Ceq);
            }
        }
        else if (_flagKind == LzLogic && c is 0 or 1)
        {
            _il.Emit(OpCodes.Ldc_I4_0);
        }
        else if (_flagKind == LzLogic && c is 3)
        {
            EmitZeroResult();
        }
        else if (_flagKind == LzLogic && c is 6)
        {
            EmitSignOfResult();
        }
        else if (_flagKind == LzLogic && c is 7)
        {
            EmitZeroResult();
            EmitSignOfResult();
            _il.Emit(OpCodes.Or);
        }
        else if (_flagKind == LzAdd && c == 1)
        {
            _il.Emit(OpCodes.Ldloc, _fr);
            _il.Emit(OpCodes.Ldloc, _fa);
            _il.Emit(OpCodes.Clt_Un);
        }
        else if (_flagKind == LzShift && c is 0 or 1 or 3 or 6 or 7)
        {
            switch (c)
            {
                case 0:
                    EmitShiftFlagBit(OfBit);
                    break;
                case 1:
                    EmitShiftFlagBit(CfBit);
                    break;
                case 3:
                    EmitShiftFlagBit(CfBit);
                    EmitZeroResult();
                    _il.Emit(OpCodes.Or);
                    break;
                case 6:
                    EmitSignOfResult();
                    EmitShiftFlagBit(OfBit);
                    _il.Emit(OpCodes.Xor);
                    break;
                default:
                    EmitSignOfResult();
                    EmitShiftFlagBit(OfBit);
                    _il.Emit(OpCodes.Xor);
                    EmitZeroResult();
                    _il.Emit(OpCodes.Or);
                    break;
            }
        }
        else if (_flagKind is LzAdc or LzSbb && c == 1)
        {
            EmitCarryWithIn();
        }
        else if (_flagKind is LzInc or LzDec && c == 1)
        {
            EmitIncDecCarry();
            _il.Emit(OpCodes.Ldc_I4_0);
            _il.Emit(OpCodes.Conv_U8);
            _il.Emit(OpCodes.Cgt_Un);
        }
        else
        {
            direct = false;
            EmitFlagStore();
            _flagsDirty = false;
            EmitTest(CondMethod, cc);
        }

        if (direct && (cc & 1) != 0)
        {
            _il.Emit(OpCodes.Ldc_I4_0);
            _il.Emit(OpCodes.Ceq);
        }
    }

    // ---- Memory --------------------------------------------------------------------------------------

    /// <summary>Computes the linear address of the memory operand into <see cref="_lin"/>.</summary>
    private void EmitLinear(in Op op)
    {
        EmitOffset(in op);
        if (op.AddrSize != 8 || op.Seg >= 4 || _bitness != 64)
        {
            _il.Emit(OpCodes.Ldloc, _cpu);
            _il.Emit(OpCodes.Ldflda, SegBaseField);
            _il.Emit(OpCodes.Ldflda, SegBaseElement);
            if (op.Seg != 0)
            {
                EmitI4(op.Seg * 8);
                _il.Emit(OpCodes.Add);
            }

            _il.Emit(OpCodes.Ldind_I8);
            _il.Emit(OpCodes.Add);
            if (op.AddrSize != 8 && _bitness != 64)
            {
                EmitI8(0xFFFFFFFFL);
                _il.Emit(OpCodes.And);
            }
        }

        _il.Emit(OpCodes.Stloc, _lin);
    }

    /// <summary>Pushes the offset of the memory operand (before the segment base), wrapped to the address size.</summary>
    private void EmitOffset(in Op op)
    {
        EmitI8(op.Disp);
        if (op.Base != 0xFF)
        {
            _il.Emit(OpCodes.Ldloc, _reg[op.Base]!);
            _il.Emit(OpCodes.Add);
        }

        if (op.Index != 0xFF)
        {
            _il.Emit(OpCodes.Ldloc, _reg[op.Index]!);
            if (op.Scale != 0)
            {
                EmitI4((int)op.Scale);
                _il.Emit(OpCodes.Shl);
            }

            _il.Emit(OpCodes.Add);
        }

        if (op.AddrSize == 4)
        {
            EmitI8(0xFFFFFFFFL);
            _il.Emit(OpCodes.And);
        }
        else if (op.AddrSize == 2)
        {
            EmitI8(0xFFFFL);
            _il.Emit(OpCodes.And);
        }
    }

    /// <summary>Records that the method uses <paramref name="tlb"/> (see <see cref="_tlbLoads"/>).</summary>
    private void NoteTlb(LocalBuilder tlb) => _tlbUsed |= tlb == _rtlb ? 1 : 2;

    /// <summary>Branches to <paramref name="slow"/> unless the TLB entry (read or write) maps <see cref="_lin"/> for <paramref name="size"/> bytes; leaves the entry in <see cref="_entry"/>.</summary>
    private void EmitTlbCheck(LocalBuilder tlb, int size, Label slow)
    {
        NoteTlb(tlb);
        // The entry at offset ((lin >> 12) & mask) * size from the first: the index is masked to the TLB's size, so no
        // bounds check is needed (the arrays are allocated with TlbSize entries and never replaced).
        _il.Emit(OpCodes.Ldloc, tlb);
        _il.Emit(OpCodes.Ldloc, _lin);
        EmitI4(12);
        _il.Emit(OpCodes.Shr_Un);
        EmitI8((long)(TlbEntries - 1));
        _il.Emit(OpCodes.And);
        EmitI8((long)System.Runtime.CompilerServices.Unsafe.SizeOf<TlbEntry>());
        _il.Emit(OpCodes.Mul);
        _il.Emit(OpCodes.Conv_I);
        _il.Emit(OpCodes.Add);
        _il.Emit(OpCodes.Stloc, _entry);
        // The tag is compared with the page of the access's last byte: an access that crosses into the next page names
        // a page whose entry is at the next index, never this one's, so one compare also sends it to the slow path.
        _il.Emit(OpCodes.Ldloc, _entry);
        _il.Emit(OpCodes.Ldfld, TagField);
        _il.Emit(OpCodes.Ldloc, _lin);
        if (size > 1)
        {
            EmitI8(size - 1);
            _il.Emit(OpCodes.Add);
        }

        EmitI4(11);
        _il.Emit(OpCodes.Shr_Un);
        EmitI8(unchecked((long)~1UL));
        _il.Emit(OpCodes.And);
        if (_userKey != 0)
        {
            _il.Emit(OpCodes.Ldc_I4_1);
            _il.Emit(OpCodes.Conv_U8);
            _il.Emit(OpCodes.Or);
        }

        _il.Emit(OpCodes.Bne_Un, slow);
    }

    private void EmitHostPointer()
    {
        _il.Emit(OpCodes.Ldloc, _entry);
        _il.Emit(OpCodes.Ldfld, HostField);
        _il.Emit(OpCodes.Ldloc, _lin);
        EmitI8(0xFFFL);
        _il.Emit(OpCodes.And);
        _il.Emit(OpCodes.Conv_I);
        _il.Emit(OpCodes.Add);
    }

    /// <summary>Reads <paramref name="size"/> bytes at <see cref="_lin"/> into <see cref="_val"/> (RMW: checked for writing first).</summary>
    private void EmitRead(int size, int opIndex, bool rmw)
    {
        var slow = _il.DefineLabel();
        var done = _il.DefineLabel();
        EmitTlbCheck(rmw ? _wtlb : _rtlb, size, slow);
        EmitHostPointer();
        if (size > 1)
        {
            _il.Emit(OpCodes.Unaligned, (byte)1);
        }

        switch (size)
        {
            case 1: _il.Emit(OpCodes.Ldind_U1); _il.Emit(OpCodes.Conv_U8); break;
            case 2: _il.Emit(OpCodes.Ldind_U2); _il.Emit(OpCodes.Conv_U8); break;
            case 4: _il.Emit(OpCodes.Ldind_U4); _il.Emit(OpCodes.Conv_U8); break;
            default: _il.Emit(OpCodes.Ldind_I8); break;
        }

        _il.Emit(OpCodes.Stloc, _val);
        _il.Emit(OpCodes.Br, done);
        _il.MarkLabel(slow);
        EmitSync(opIndex);
        EmitCallOut(
            () =>
            {
                _il.Emit(OpCodes.Ldarg_1);
                _il.Emit(OpCodes.Ldloc, _lin);
                EmitI4(size);
                EmitSlowBlock();
                _il.Emit(OpCodes.Call, rmw ? ReadRmwSlowMethod : ReadSlowMethod);
                _il.Emit(OpCodes.Stloc, _val);
            },
            written: true);
        if (rmw && _loops)
        {
            // The write goes to the same address: formed again from the registers read back, rather than kept across the call.
            EmitLinear(in _ops[opIndex]);
        }

        _il.MarkLabel(done);
    }

    /// <summary>Writes the low <paramref name="size"/> bytes of <paramref name="value"/> at <see cref="_lin"/>; a write that hits cached code ends the block after this instruction.</summary>
    private void EmitWrite(int size, LocalBuilder value, int opIndex) => EmitWrite(size, value, opIndex, null, _ops[opIndex].Next);

    /// <summary>
    /// As <see cref="EmitWrite(int, LocalBuilder, int)"/>, with <paramref name="commit"/> emitted once the write is
    /// done (the op's register updates, which a faulting write must not make; from registers, not from the address or
    /// the value, which the slow path does not keep) and <paramref name="ripAfter"/> the RIP after the op.
    /// </summary>
    private void EmitWrite(int size, LocalBuilder value, int opIndex, Action? commit, ulong ripAfter, LocalBuilder? ripAfterLocal = null)
    {
        var slow = _il.DefineLabel();
        var done = _il.DefineLabel();
        EmitTlbCheck(_wtlb, size, slow);
        EmitHostPointer();
        _il.Emit(OpCodes.Ldloc, value);
        switch (size)
        {
            case 1: _il.Emit(OpCodes.Conv_U1); _il.Emit(OpCodes.Stind_I1); break;
            case 2: _il.Emit(OpCodes.Conv_U2); _il.Emit(OpCodes.Unaligned, (byte)1); _il.Emit(OpCodes.Stind_I2); break;
            case 4: _il.Emit(OpCodes.Conv_U4); _il.Emit(OpCodes.Unaligned, (byte)1); _il.Emit(OpCodes.Stind_I4); break;
            default: _il.Emit(OpCodes.Unaligned, (byte)1); _il.Emit(OpCodes.Stind_I8); break;
        }

        commit?.Invoke();
        _il.Emit(OpCodes.Br, done);
        _il.MarkLabel(slow);
        EmitSync(opIndex);
        EmitCallOut(
            () =>
            {
                _il.Emit(OpCodes.Ldarg_1);
                _il.Emit(OpCodes.Ldloc, _lin);
                EmitI4(size);
                _il.Emit(OpCodes.Ldloc, value);
                EmitSlowBlock();
                _il.Emit(OpCodes.Call, WriteSlowMethod);
            },
            written: true);
        commit?.Invoke();

        // A write to a page with cached code invalidated blocks (maybe this one): stop after this instruction.
        _il.Emit(OpCodes.Ldarg_1);
        _il.Emit(OpCodes.Ldfld, StopField);
        _il.Emit(OpCodes.Brfalse, done);
        EmitRetire(opIndex + 1);
        if (ripAfterLocal != null)
        {
            // A computed RIP after the op (an indirect call's target).
            EmitWriteBack(regsAndFlags: commit != null);
            EmitSetRip(ripAfterLocal);
            _il.Emit(OpCodes.Ret);
        }
        else
        {
            EmitLeave(ripAfter, -1, synced: commit == null);
        }

        _il.MarkLabel(done);
    }

    // ---- Exits ---------------------------------------------------------------------------------------

    private void EmitRetire(int count)
    {
        if (count == 0)
        {
            return;
        }

        _il.Emit(OpCodes.Ldloc, _rc);
        EmitI8((long)count);
        _il.Emit(OpCodes.Add);
        _il.Emit(OpCodes.Stloc, _rc);
    }

    /// <summary>Stores the retired count kept in <see cref="_rc"/> to the vCPU.</summary>
    private void EmitStoreRetired()
    {
        _il.Emit(OpCodes.Ldarg_1);
        _il.Emit(OpCodes.Ldloc, _rc);
        _il.Emit(OpCodes.Stfld, RetiredField);
    }

    private void EmitSetRip(ulong rip)
    {
        _il.Emit(OpCodes.Ldloc, _cpu);
        EmitI8(unchecked((long)rip));
        _il.Emit(OpCodes.Stfld, RipField);
    }

    /// <summary>Stores RIP from <paramref name="rip"/> (a computed target or a shared exit's RIP).</summary>
    private void EmitSetRip(LocalBuilder rip) => StoreCpuField(RipField, rip);

    /// <summary>
    /// Writes the state back, so that the CPU state is what the interpreter would hold (RIP aside): the registers the
    /// method writes and the pending flags (unless <paramref name="regsAndFlags"/> is false, after a sync wrote them),
    /// then the retired count. Every exit, slow path and interpreter call writes back through this.
    /// </summary>
    private void EmitWriteBack(bool regsAndFlags = true)
    {
        if (regsAndFlags)
        {
            WriteBackRegs();
            EmitFlagStore();
        }

        EmitStoreRetired();
    }

    // ---- The block -----------------------------------------------------------------------------------

    private void Emit()
    {
        EmitBody();
        EmitTails();
    }

    [System.Diagnostics.CodeAnalysis.SuppressMessage("Maintainability", "CA1502:Avoid excessive complexity", Justification = "The dispatch over inline forms, one emitter each.")]
    private void EmitBody()
    {
        var inlines = new bool[_region.Length][];
        for (int k = 0; k < _region.Length; k++)
        {
            var ops = _region[k].Ops;
            int count = _region[k].Count;
            var flags = inlines[k] = new bool[count];
            for (int i = 0; i < count; i++)
            {
                flags[i] = IsInline(_region[k], i);
                _hasFallback |= !flags[i];
                if (flags[i] && ops[i].Inline == InlineOp.None)
                {
                    UseSseRegs(in ops[i], in _region[k].Instrs[i]);
                }
                else if (flags[i])
                {
                    if (IsRepString(in ops[i], _bitness))
                    {
                        // RAX (STOS), RCX, RSI (MOVS), RDI; all four so the slow path reloads what the interpreter moved.
                        Use(0);
                        Use(1);
                        Use(6);
                        Use(7);
                    }

                    UseOperandRegs(in ops[i], true, true);
                    if (ops[i].Inline is InlineOp.MulDiv or InlineOp.AccExtend)
                    {
                        Use(0);
                        Use(2);
                    }

                    if (ops[i].Inline == InlineOp.Cmpxchg)
                    {
                        Use(0);
                    }

                    if (UsesStack(in ops[i]))
                    {
                        Use(4);
                    }
                }
            }
        }

        int n = _b.Count;
        bool[] inline = inlines[0];

        // Prologue: references to the register file, the CPU state and the TLBs; registers into locals.
        _il.Emit(OpCodes.Ldarg_1);
        _il.Emit(OpCodes.Ldflda, CpuField);
        _il.Emit(OpCodes.Stloc, _cpu);
        for (int t = 0; t < 2; t++)
        {
            if ((_tlbLoads & (1 << t)) == 0)
            {
                continue;
            }

            _il.Emit(OpCodes.Ldarg_1);
            _il.Emit(OpCodes.Ldfld, t == 0 ? RtlbField : WtlbField);
            _il.Emit(OpCodes.Ldc_I4_0);
            _il.Emit(OpCodes.Ldelema, typeof(TlbEntry));
            _il.Emit(OpCodes.Stloc, t == 0 ? _rtlb : _wtlb);
        }
        _il.Emit(OpCodes.Ldarg_1);
        _il.Emit(OpCodes.Ldc_I4_0);
        _il.Emit(OpCodes.Stfld, StopField);
        _il.Emit(OpCodes.Ldarg_2);
        _il.Emit(OpCodes.Ldc_I4_1);
        _il.Emit(OpCodes.Stfld, UsedField);
        ulong startRip = OpStart(in _ops[0]);
        ref Op lastOp = ref _ops[n - 1];
        bool selfLoop = _region.Length == 1 && inline[n - 1] && lastOp.Inline is InlineOp.Jcc or InlineOp.Jmp && lastOp.Target == startRip;
        _loops = _region.Length > 1 || selfLoop;
        foreach (var r in _region)
        {
            _regionMaxCount = Math.Max(_regionMaxCount, r.Count);
        }

        // The loop's limit is taken before the guest state is loaded into locals, so none of them is live across the call.
        bool limited = _region.Length > 1 || (selfLoop && !_hasFallback);
        if (limited)
        {
            _loopLimit = _il.DeclareLocal(typeof(long));
            _checkAt = _il.DeclareLocal(typeof(long));
            _loopLimitCount = _region.Length > 1 ? _regionMaxCount : n;
            _plat = _il.DeclareLocal(typeof(InterpreterPlatform));
            _il.Emit(OpCodes.Ldarg_1);
            _il.Emit(OpCodes.Ldfld, PlatField);
            _il.Emit(OpCodes.Stloc, _plat);
            EmitTakeLoopLimit();
        }

        EmitLoadRetired();
        if (limited)
        {
            EmitNextCheck();
        }

        LoadAllRegs();
        if (_region.Length > 1)
        {
            EmitRegion(inlines);
            return;
        }

        _headLabel = _il.DefineLabel();
        if (selfLoop && !_hasFallback)
        {
            // The first iteration starts from flags in the CPU state; later ones from the flags of the one before,
            // still in locals: emit the body twice and loop on the second copy, so no iteration stores flags.
            Flags = FlagState.InState;
            _flagsDirty = false;
            EmitOps(inline, startRip);
            _il.MarkLabel(_headLabel);
            Flags = _loopFlags;
            _flagsDirty = _flagKind != Unknown;
            EmitOps(inline, startRip);
        }
        else
        {
            _il.MarkLabel(_headLabel);
            Flags = FlagState.InState;
            _flagsDirty = false;
            EmitOps(inline, startRip);
        }
    }

    /// <summary>
    /// The blocks of a region, each at its label; an exit to a region block's start is a branch to its label (see
    /// <see cref="EmitInternalEdge"/>), others leave as single blocks do.
    /// </summary>
    private void EmitRegion(bool[][] inlines)
    {
        for (int k = 0; k < _region.Length; k++)
        {
            _blockLabels[k] = _il.DefineLabel();
        }

        ComputeEntryFlags();
        for (int k = 0; k < _region.Length; k++)
        {
            _cur = k;
            _ops = _region[k].Ops;
            _il.MarkLabel(_blockLabels[k]);
            Flags = _entryFlags[k];
            _flagsDirty = _flagKind != Unknown;
            EmitOps(inlines[k], OpStart(in _ops[0]));
        }
    }

    private readonly Label[] _blockLabels;

    /// <summary>
    /// Per region block, the flag producer (kind and size) in the flag locals on entry, or <see cref="Unknown"/> when
    /// the flags are in the CPU state: known when every edge into the block inside the region carries the same
    /// producer (the root is entered from outside, so its flags are in the CPU state). Edges into a block with a
    /// known producer leave the flags in locals.
    /// </summary>
    private readonly FlagState[] _entryFlags;

    /// <summary>Per region block, whether it overwrites the flags before anything reads them or may write them back (see <see cref="FlagsDeadAfter"/>).</summary>
    private readonly bool[] _entryDead;

    /// <summary>
    /// Whether the flags as they are after op <paramref name="i"/> (-1: on entry) of a block's <paramref name="count"/>
    /// ops are overwritten by a later op of the block (an ALU operation, shift or IMUL on registers and immediates, which
    /// set every flag from their own operands) before anything reads them or may write them back: only register moves,
    /// LEA, MOVZX/MOVSX of registers and INC/DEC of registers (whose own flags are then dead as well, so they read no
    /// carry) come between, none of which can fault, exit or call.
    /// </summary>
    private static bool FlagsDeadAfter(Op[] ops, int count, int i, int bitness)
    {
        for (int j = i + 1; j < count; j++)
        {
            ref Op op = ref ops[j];
            if (!IsInline(in op, bitness, j == count - 1))
            {
                return false;
            }

            switch (op.Inline)
            {
                case InlineOp.AluRR or InlineOp.AluRI or InlineOp.AluRR64 or InlineOp.AluRI64:
                    return !IsCarryIn(in op);
                case InlineOp.Alu:
                    return op.K0 != OpKindX.Mem && op.K1 != OpKindX.Mem && !IsCarryIn(in op);
                case InlineOp.MulDiv when op.Sub < 2:
                    return op.K0 != OpKindX.Mem;
                case InlineOp.Shift:
                    // (By CL the count may be 0, which leaves the flags.)
                    return op.Sub is not (0 or 1) && op.K0 == OpKindX.Reg && op.K1 == OpKindX.Imm;
                case InlineOp.Imul2:
                    return op.K1 != OpKindX.Mem;
                case InlineOp.NegNot when op.Sub == 0:
                    return op.K0 != OpKindX.Mem;
                case InlineOp.NegNot or InlineOp.Xchg or InlineOp.MovFromSreg when op.K0 == OpKindX.Reg:
                    break;
                case InlineOp.Bswap or InlineOp.AccExtend:
                    break;
                case InlineOp.Nop or InlineOp.MovRR or InlineOp.MovRI or InlineOp.Lea or InlineOp.IncDecR64:
                    break;
                case InlineOp.IncDec or InlineOp.Movzx or InlineOp.Movsx when op.K0 == OpKindX.Reg && (op.Inline == InlineOp.IncDec || op.K1 == OpKindX.Reg):
                    break;
                case InlineOp.Mov when op.K0 == OpKindX.Reg && op.K1 is OpKindX.Reg or OpKindX.Imm:
                    break;
                default:
                    return false;
            }
        }

        return false;
    }

    private void ComputeEntryFlags()
    {
        const int Top = int.MinValue;
        var top = new FlagState(Top, 0, Unknown, 0, null);
        int m = _region.Length;
        var entry = _entryFlags;
        Array.Fill(entry, top);
        entry[0] = FlagState.InState;
        for (int k = 0; k < m; k++)
        {
            // A block that overwrites the flags before reading them or writing them back starts from any: it is
            // emitted from flags in the CPU state (not read) and edges into it store nothing.
            _entryDead[k] = FlagsDeadAfter(_region[k].Ops, _region[k].Count, -1, _bitness);
            if (_entryDead[k])
            {
                entry[k] = FlagState.InState;
            }
        }

        for (int round = 0; round <= m; round++)
        {
            for (int k = 0; k < m; k++)
            {
                if (entry[k].Kind == Top)
                {
                    continue;
                }

                var exit = ExitFlags(_region[k], entry[k]);
                foreach (ulong rip in Successors(_region[k], _speculated))
                {
                    if (RegionIndex(rip) is var t && t > 0 && !_entryDead[t])
                    {
                        entry[t] = entry[t].Kind == Top ? exit : entry[t] == exit ? exit : FlagState.InState;
                    }
                }
            }
        }

        for (int k = 0; k < m; k++)
        {
            if (entry[k].Kind == Top)
            {
                entry[k] = FlagState.InState;
            }
        }
    }

    /// <summary>The successors of a region block (all its ops run inline) inside the method: its static targets, or the expected target of a computed one (<paramref name="speculated"/>).</summary>
    private static ulong[] Successors(Block b, Dictionary<Block, Block> speculated)
    {
        ref Op last = ref b.Ops[b.Count - 1];
        return last.Inline switch
        {
            InlineOp.Jcc => [last.Target, last.Next],
            InlineOp.Jmp or InlineOp.Call => [last.Target],
            InlineOp.Ret or InlineOp.CallInd => speculated.TryGetValue(b, out var y) ? [OpStart(in y.Ops[0])] : [],
            _ => [last.Next],
        };
    }

    /// <summary>The flag producer after <paramref name="b"/>'s ops, given the one on entry (as the emitters track it).</summary>
    private static FlagState ExitFlags(Block b, FlagState entry)
    {
        var f = entry;
        for (int i = 0; i < b.Count; i++)
        {
            ref Op op = ref b.Ops[i];
            switch (op.Inline)
            {
                case InlineOp.AluRR or InlineOp.AluRI or InlineOp.AluRR64 or InlineOp.AluRI64 or InlineOp.Alu:
                    int kind = op.Sub switch
                    {
                        Translator.AluAdd => LzAdd,
                        Translator.AluSub or Translator.AluCmp => LzSub,
                        Translator.AluAdc => LzAdc,
                        Translator.AluSbb => LzSbb,
                        _ => LzLogic,
                    };
                    bool imm = op.Inline is InlineOp.AluRI or InlineOp.AluRI64 || (op.Inline == InlineOp.Alu && op.K1 == OpKindX.Imm);
                    f = new(kind, op.Inline is InlineOp.AluRR64 or InlineOp.AluRI64 ? 8 : op.Size, Unknown, 0,
                        kind == LzLogic ? 0 : imm ? unchecked((long)op.Imm) : null);
                    break;
                case InlineOp.IncDecR64 or InlineOp.IncDec:
                    var (cfKind, cfSize) = CarrySource(f);
                    f = new(op.Sub == 0 ? LzInc : LzDec, op.Inline == InlineOp.IncDecR64 ? 8 : op.Size, cfKind, cfSize, f.B);
                    break;
                case InlineOp.Shift when op.Sub is 0 or 1 || op.K1 == OpKindX.Reg:
                    // ROL/ROR merge CF and OF into the flags before them, and a shift by CL (which may be by 0) stores
                    // its flags or keeps those before it: either way the result is in the CPU state.
                    f = FlagState.InState;
                    break;
                case InlineOp.Shift or InlineOp.Imul2:
                case InlineOp.MulDiv when op.Sub < 2:
                    f = new(LzShift, op.Size, Unknown, 0, 0);
                    break;
                case InlineOp.NegNot when op.Sub == 0:
                    // NEG: SUB's flags of 0 minus the operand (in the flag locals).
                    f = new(LzSub, op.Size, Unknown, 0, null);
                    break;
                case InlineOp.Pushf or InlineOp.Bt:
                    // PUSHF materializes the flags into the CPU state; BT sets CF there, the others as they were.
                    f = FlagState.InState;
                    break;
                case InlineOp.Cmpxchg:
                    // CMP's flags of the accumulator and the destination.
                    f = new(LzSub, op.Size, Unknown, 0, null);
                    break;
                case InlineOp.Xadd:
                    f = new(LzAdd, op.Size, Unknown, 0, null);
                    break;
                default:
                    break;
            }
        }

        return f;
    }
    private int _regionMaxCount;

    /// <summary>
    /// The index in the region of the block that starts at <paramref name="rip"/>, or -1. A linear search: regions hold
    /// at most <see cref="MaxRegionBlocks"/> blocks, and a dictionary keyed by <see langword="ulong"/> is framework generic
    /// code that no ReadyToRun image holds (every process would compile it at its first use).
    /// </summary>
    private int RegionIndex(ulong rip) => Array.IndexOf(_regionStarts, rip);

    /// <summary>Leaves the block with <paramref name="retired"/> instructions to <paramref name="rip"/>: into a region block when that is one, else out of the method.</summary>
    private void EmitEdge(int retired, ulong rip, int slot)
    {
        if (_region.Length > 1 && RegionIndex(rip) is var k && k >= 0)
        {
            EmitInternalEdge(retired, rip, k);
            return;
        }

        EmitExit(retired, rip, slot);
    }

    /// <summary>
    /// From the current block (its <paramref name="n"/> instructions retired) to region block <paramref name="k"/>: taken
    /// while the budget allows a whole block of the region and, on a backward edge, nothing needs the run loop (the same
    /// checks as a self-loop's); otherwise the method returns with RIP at the target.
    /// </summary>
    private void EmitInternalEdge(int n, ulong rip, int k)
    {
        var entry = _entryFlags[k];
        if (_entryDead[k])
        {
            // The block overwrites the flags before reading them: nothing to store (a leave below stores them).
        }
        else if (entry.Kind == Unknown)
        {
            // The target block starts from flags in the CPU state.
            EmitFlagStore();
        }
        else if (entry != Flags)
        {
            throw new InvalidProgramException("Region edge does not carry the flags its target block expects.");
        }

        EmitRetire(n);
        var leave = _il.DefineLabel();
        EmitLoopChecks(_blockLabels[k], leave, _regionMaxCount);
        _il.MarkLabel(leave);
        EmitLeave(rip, -1);
    }

    /// <summary>
    /// Pushes the block argument of a call that may fault (a memory slow path, a divide error): the block being
    /// emitted, which the callee makes the vCPU's last block, the one a fault restarts in. Compiled code never stores
    /// that field itself: a reference store takes a GC write barrier (a call), which on every entry to a compiled block
    /// cost more than the rare slow path's argument; every call out of compiled code that can fault names its block
    /// (these, and the interpreter steps, whose <see cref="InterpreterVcpu.JitStep"/> runs the op as the interpreter does).
    /// </summary>
    private void EmitSlowBlock() => EmitLoadCurrentBlock();

    /// <summary>Pushes the block being emitted (the method's block argument, or an element of the region it is bound to).</summary>
    private void EmitLoadCurrentBlock()
    {
        if (_cur == 0)
        {
            _il.Emit(OpCodes.Ldarg_2);
            return;
        }

        _il.Emit(OpCodes.Ldarg_0);
        EmitI4(_cur);
        _il.Emit(OpCodes.Ldelem_Ref);
    }

    private LocalBuilder? _loopLimit;

    /// <summary>The instruction count <see cref="_loopLimit"/> was computed for (a whole iteration or region block).</summary>
    private int _loopLimitCount;
    private LocalBuilder? _plat;
    private bool _hasFallback;
    private FlagState _loopFlags = FlagState.InState;

    [System.Diagnostics.CodeAnalysis.SuppressMessage("Maintainability", "CA1502:Avoid excessive complexity", Justification = "The dispatch over inline forms, one emitter each.")]
    private void EmitOps(bool[] inline, ulong startRip)
    {
        int n = inline.Length;
        for (int i = 0; i < n; i++)
        {
            ref Op op = ref _ops[i];
            bool last = i == n - 1;
            if (!inline[i])
            {
                EmitFallback(i, last);
                continue;
            }

            if (op.Inline == InlineOp.None)
            {
                EmitSse(i);
                continue;
            }

            switch (op.Inline)
            {
                case InlineOp.Nop:
                    break;
                case InlineOp.AluRR:
                case InlineOp.AluRI:
                case InlineOp.AluRR64:
                case InlineOp.AluRI64:
                case InlineOp.Alu:
                    EmitAlu(i);
                    break;
                case InlineOp.IncDecR64:
                case InlineOp.IncDec:
                    EmitIncDec(i);
                    break;
                case InlineOp.MovRR:
                    GetReg(op.R1, op.Size);
                    SetReg(op.R0, op.Size);
                    break;
                case InlineOp.MovRI:
                    EmitI8(unchecked((long)op.Imm));
                    SetReg(op.R0, op.Size);
                    break;
                case InlineOp.MovRM:
                    EmitLinear(in op);
                    EmitRead(op.Size, i, rmw: false);
                    _il.Emit(OpCodes.Ldloc, _val);
                    SetReg(op.R0, op.Size);
                    break;
                case InlineOp.MovMR:
                    EmitLinear(in op);
                    GetReg(op.R1, op.Size);
                    _il.Emit(OpCodes.Stloc, _val);
                    EmitWrite(op.Size, _val, i);
                    break;
                case InlineOp.Mov:
                    EmitMov(i);
                    break;
                case InlineOp.Lea:
                    EmitOffset(in op);
                    SetReg(op.R0, op.Size);
                    break;
                case InlineOp.Movzx:
                case InlineOp.Movsx:
                    EmitMovx(i);
                    break;
                case InlineOp.Jcc:
                case InlineOp.Jmp:
                    _loopFlags = Flags;
                    EmitBranch(i, startRip);
                    break;
                case InlineOp.Push:
                    EmitPush(i);
                    break;
                case InlineOp.Pop:
                    EmitPop(i);
                    break;
                case InlineOp.Call:
                    EmitCall(i);
                    break;
                case InlineOp.Ret:
                    EmitRet(i);
                    break;
                case InlineOp.Cmovcc:
                    EmitCmov(i);
                    break;
                case InlineOp.Setcc:
                    EmitSetcc(i);
                    break;
                case InlineOp.Imul2:
                    EmitImul(i);
                    break;
                case InlineOp.MulDiv:
                    EmitMulDiv(i);
                    break;
                case InlineOp.Shift:
                    EmitShift(i);
                    break;
                case InlineOp.Movs:
                case InlineOp.Stos:
                    EmitRepString(i);
                    break;
                case InlineOp.NegNot:
                    EmitNegNot(i);
                    break;
                case InlineOp.Xchg:
                    EmitXchg(i);
                    break;
                case InlineOp.Pushf:
                    EmitPushf(i);
                    break;
                case InlineOp.Bswap:
                    EmitBswap(i);
                    break;
                case InlineOp.AccExtend:
                    EmitAccExtend(i);
                    break;
                case InlineOp.MovFromSreg:
                    EmitMovFromSreg(i);
                    break;
                case InlineOp.Bt:
                    EmitBt(i);
                    break;
                case InlineOp.Cmpxchg:
                    EmitCmpxchg(i);
                    break;
                case InlineOp.Xadd:
                    EmitXadd(i);
                    break;
                case InlineOp.CallInd:
                    EmitCallInd(i);
                    break;
                default:
                    throw new InvalidProgramException($"Op {op.Inline} marked inline without an emitter.");
            }
        }

        if (inline[n - 1] && !IsBranch(in _ops[n - 1]))
        {
            EmitEdge(n, _ops[n - 1].Next, 1);
        }
    }

    private static bool IsBranch(in Op op) => op.Inline is InlineOp.Jcc or InlineOp.Jmp or InlineOp.Call or InlineOp.Ret or InlineOp.CallInd;

    /// <summary>
    /// Leaves the block normally: state written back, <paramref name="retired"/> instructions counted, RIP set; then
    /// runs the compiled block linked to exit <paramref name="slot"/> directly when the link holds, or returns with
    /// the exit named so that the run loop links the block it finds.
    /// </summary>
    private void EmitExit(int retired, ulong rip, int slot)
    {
        EmitRetire(retired);
        EmitLeave(rip, slot);
    }

    /// <summary>
    /// The chaining tail of exit <paramref name="slot"/>: <see cref="InterpreterVcpu.JitLinked"/> checks the link (same
    /// link generation, still valid, compiled, allowed by <see cref="InterpreterVcpu.JitMayChain"/>, and for a computed
    /// target <paramref name="dynamicRip"/> its start) and names the exit for the run loop when there is none; the linked
    /// block's code (read again here: the compiler may have dropped it since, and then the method returns) is called in
    /// tail position, else the method returns. One call instead of the checks inline keeps each exit's IL short, and
    /// the .NET JIT's time per block grows with the IL.
    /// </summary>
    private void EmitChain(int slot, LocalBuilder? dynamicRip = null, LocalBuilder? slotLocal = null)
    {
        var target = _chainTarget ??= _il.DeclareLocal(typeof(Block));
        var code = _chainCode ??= _il.DeclareLocal(typeof(CompiledBlock));
        var slow = _il.DefineLabel();
        var invoke = _il.DefineLabel();
        if (_inlineLinks)
        {
            EmitLinkFastPath(slot, dynamicRip, slotLocal, target, code, slow, invoke);
        }

        _il.MarkLabel(slow);
        _il.Emit(OpCodes.Ldarg_1);
        EmitLoadCurrentBlock();
        if (slotLocal != null)
        {
            _il.Emit(OpCodes.Ldloc, slotLocal);
        }
        else
        {
            EmitI4(slot);
        }
        if (dynamicRip != null)
        {
            _il.Emit(OpCodes.Ldc_I4_1);
            _il.Emit(OpCodes.Ldloc, dynamicRip);
        }
        else
        {
            _il.Emit(OpCodes.Ldc_I4_0);
            _il.Emit(OpCodes.Ldc_I4_0);
            _il.Emit(OpCodes.Conv_U8);
        }

        _il.Emit(OpCodes.Call, LinkedMethod);
        _il.Emit(OpCodes.Stloc, target);
        var ret = _il.DefineLabel();
        _il.Emit(OpCodes.Ldloc, target);
        _il.Emit(OpCodes.Brfalse, ret);
        EmitLoadCode(target, code, ret);
        _il.MarkLabel(invoke);
        _il.Emit(OpCodes.Ldloc, code);
        _il.Emit(OpCodes.Ldarg_1);
        _il.Emit(OpCodes.Ldloc, target);
        if (TailCalls)
        {
            _il.Emit(OpCodes.Tailcall);
        }

        _il.Emit(OpCodes.Callvirt, InvokeMethod);
        _il.Emit(OpCodes.Ret);
        _il.MarkLabel(ret);
        _il.Emit(OpCodes.Ret);
    }

    /// <summary>
    /// The common case of <see cref="InterpreterVcpu.JitLinked"/> inline: the exit's link was made in this link
    /// generation (for a computed target, to a block at <paramref name="dynamicRip"/>), its block is valid and compiled,
    /// and <see cref="InterpreterVcpu.JitMayChain"/> (inlined by the .NET JIT) allows it; then it branches to
    /// <paramref name="invoke"/>, the tail call of the block's code, or the method returns when the chaining check says
    /// no. Anything else goes to <paramref name="slow"/>, the call of <see cref="InterpreterVcpu.JitLinked"/>, which
    /// checks it all again (links to global code from an older generation, lookups, naming the exit for the run loop).
    /// </summary>
    private void EmitLinkFastPath(int slot, LocalBuilder? dynamicRip, LocalBuilder? slotLocal, LocalBuilder target, LocalBuilder code, Label slow, Label invoke)
    {
        var gen = _chainGen ??= _il.DeclareLocal(typeof(long));
        if (slotLocal != null)
        {
            var second = _il.DefineLabel();
            var join = _il.DefineLabel();
            _il.Emit(OpCodes.Ldloc, slotLocal);
            _il.Emit(OpCodes.Brtrue, second);
            EmitLoadLink(0, target, gen);
            _il.Emit(OpCodes.Br, join);
            _il.MarkLabel(second);
            EmitLoadLink(1, target, gen);
            _il.MarkLabel(join);
        }
        else
        {
            EmitLoadLink(slot, target, gen);
        }

        _il.Emit(OpCodes.Ldloc, target);
        _il.Emit(OpCodes.Brfalse, slow);
        _il.Emit(OpCodes.Ldloc, gen);
        _il.Emit(OpCodes.Ldarg_1);
        _il.Emit(OpCodes.Ldfld, LinkGenerationField);
        _il.Emit(OpCodes.Bne_Un, slow);
        if (dynamicRip != null)
        {
            _il.Emit(OpCodes.Ldloc, target);
            _il.Emit(OpCodes.Ldfld, BlockLinField);
            _il.Emit(OpCodes.Ldloc, dynamicRip);
            _il.Emit(OpCodes.Bne_Un, slow);
        }

        _il.Emit(OpCodes.Ldloc, target);
        _il.Emit(OpCodes.Volatile);
        _il.Emit(OpCodes.Ldfld, ValidField);
        _il.Emit(OpCodes.Brfalse, slow);
        EmitLoadCode(target, code, slow);
        _il.Emit(OpCodes.Ldarg_1);
        _il.Emit(OpCodes.Ldloc, target);
        _il.Emit(OpCodes.Ldfld, BlockCountField);
        _il.Emit(OpCodes.Call, MayChainMethod);
        _il.Emit(OpCodes.Brtrue, invoke);
        _il.Emit(OpCodes.Ret);
    }

    /// <summary>The compiled code of block <paramref name="target"/> (read once, volatile) into <paramref name="code"/>; to <paramref name="whenNull"/> when it has none.</summary>
    private void EmitLoadCode(LocalBuilder target, LocalBuilder code, Label whenNull)
    {
        _il.Emit(OpCodes.Ldloc, target);
        _il.Emit(OpCodes.Volatile);
        _il.Emit(OpCodes.Ldfld, CompiledField);
        _il.Emit(OpCodes.Stloc, code);
        _il.Emit(OpCodes.Ldloc, code);
        _il.Emit(OpCodes.Brfalse, whenNull);
    }

    /// <summary>The current block's link <paramref name="slot"/> and its generation, into <paramref name="target"/> and <paramref name="gen"/>.</summary>
    private void EmitLoadLink(int slot, LocalBuilder target, LocalBuilder gen)
    {
        EmitLoadCurrentBlock();
        _il.Emit(OpCodes.Ldfld, slot == 0 ? Link0Field : Link1Field);
        _il.Emit(OpCodes.Stloc, target);
        EmitLoadCurrentBlock();
        _il.Emit(OpCodes.Ldfld, slot == 0 ? LinkGen0Field : LinkGen1Field);
        _il.Emit(OpCodes.Stloc, gen);
    }

    /// <summary>
    /// Hot methods are compiled again with their exits' link checks inline (<see cref="JitCompilerThread.PromoteAfter"/>;
    /// <c>VIRT_INTERPRETER_JIT_INLINE_LINKS=0</c> leaves every check to <see cref="InterpreterVcpu.JitLinked"/>, for
    /// comparison).
    /// </summary>
    internal static readonly bool InlineLinks = Environment.GetEnvironmentVariable("VIRT_INTERPRETER_JIT_INLINE_LINKS") != "0";

    /// <summary>This method's exits check their links inline (<see cref="EmitLinkFastPath"/>).</summary>
    private readonly bool _inlineLinks;

    private LocalBuilder? _chainGen;

    /// <summary>Linked calls are emitted as tail calls (<c>VIRT_INTERPRETER_JIT_TAILCALL=0</c> makes them plain calls, for comparison).</summary>
    private static readonly bool TailCalls = Environment.GetEnvironmentVariable("VIRT_INTERPRETER_JIT_TAILCALL") != "0";

    private LocalBuilder? _chainTarget;
    private LocalBuilder? _chainCode;

    private void EmitFallback(int i, bool last)
    {
        ref Op op = ref _ops[i];
        if (!last && UseTail(TailStep, out var tail))
        {
            var cont = _il.DefineLabel();
            EmitI4(i);
            _il.Emit(OpCodes.Stloc, _syncIndex ??= _il.DeclareLocal(typeof(int)));
            EmitI8(unchecked((long)OpStart(in op)));
            _il.Emit(OpCodes.Stloc, _exitRip ??= _il.DeclareLocal(typeof(ulong)));
            EmitI4(tail.Continuations.Count);
            _il.Emit(OpCodes.Stloc, _syncCont ??= _il.DeclareLocal(typeof(int)));
            _il.Emit(OpCodes.Br, tail.Label);
            tail.Continuations.Add(cont);
            _il.MarkLabel(cont);
            Flags = FlagState.InState;
            _flagsDirty = false;
            return;
        }

        EmitWriteBack();
        EmitSetRip(OpStart(in op));
        _il.Emit(OpCodes.Ldarg_1);
        _il.Emit(OpCodes.Ldarg_2);
        EmitI4(i);
        _il.Emit(OpCodes.Call, StepMethod);
        _il.Emit(OpCodes.Conv_I8);
        _il.Emit(OpCodes.Stloc, _tmp);
        if (_loops)
        {
            // Not kept across the call (see EmitCallOut); the interpreter does not count the op.
            EmitLoadRetired();
        }

        var leave = _il.DefineLabel();
        if (!last)
        {
            // The op did not retire (it faulted into a handler, or exits) or asked to stop: leave after it.
            var go = _il.DefineLabel();
            _il.Emit(OpCodes.Ldloc, _tmp);
            _il.Emit(OpCodes.Brfalse, leave);
            _il.Emit(OpCodes.Ldarg_1);
            _il.Emit(OpCodes.Ldfld, StopField);
            _il.Emit(OpCodes.Brfalse, go);
            _il.MarkLabel(leave);
            EmitRetiredAfterStep(i);
            _il.Emit(OpCodes.Ret);
            _il.MarkLabel(go);
            LoadAllRegs();
            Flags = FlagState.InState;
            _flagsDirty = false;
            return;
        }

        // The last op set RIP itself; the block ends here.
        EmitRetiredAfterStep(i);
        _il.Emit(OpCodes.Ret);
    }

    /// <summary>After the interpreter ran op <paramref name="i"/> (retired count in <see cref="_tmp"/>): the retired count of the block so far, stored.</summary>
    private void EmitRetiredAfterStep(int i)
    {
        _il.Emit(OpCodes.Ldarg_1);
        _il.Emit(OpCodes.Ldloc, _rc);
        _il.Emit(OpCodes.Ldloc, _tmp);
        _il.Emit(OpCodes.Add);
        if (i != 0)
        {
            EmitI8((long)i);
            _il.Emit(OpCodes.Add);
        }

        _il.Emit(OpCodes.Stfld, RetiredField);
    }

    private void EmitBranch(int i, ulong startRip)
    {
        ref Op op = ref _ops[i];
        int n = i + 1;
        bool selfLoop = _region.Length == 1 && op.Target == startRip;
        if (op.Inline == InlineOp.Jmp)
        {
            if (selfLoop)
            {
                EmitBackEdge(n, startRip);
            }
            else
            {
                EmitEdge(n, op.Target, 0);
            }

            return;
        }

        var taken = _il.DefineLabel();
        EmitCondition(op.Sub);
        _il.Emit(OpCodes.Brtrue, taken);
        EmitEdge(n, op.Next, 1);
        _il.MarkLabel(taken);
        if (selfLoop)
        {
            EmitBackEdge(n, startRip);
        }
        else
        {
            EmitEdge(n, op.Target, 0);
        }
    }

    /// <summary>
    /// Instructions between two looks at what other threads set, at most (a power of two, at least twice the
    /// instructions of the largest region, <see cref="MaxRegionInstructions"/>).
    /// </summary>
    internal const long PollInstructions = 1024;

    /// <summary>
    /// The retired count after which the next edge inside the loop takes the slow check: the lower of the loop's limit
    /// and the last count before the next multiple of <see cref="PollInstructions"/>.
    /// </summary>
    private LocalBuilder? _checkAt;

    /// <summary>The loop's limit (<see cref="InterpreterVcpu.JitLoopLimit"/>) for <see cref="_loopLimitCount"/> instructions, into <see cref="_loopLimit"/>.</summary>
    private void EmitTakeLoopLimit()
    {
        _il.Emit(OpCodes.Ldarg_1);
        EmitI4(_loopLimitCount);
        _il.Emit(OpCodes.Call, LoopLimitMethod);
        _il.Emit(OpCodes.Stloc, _loopLimit!);
    }

    /// <summary>Sets <see cref="_checkAt"/> from the retired count and the loop's limit.</summary>
    private void EmitNextCheck()
    {
        var keep = _il.DefineLabel();
        _il.Emit(OpCodes.Ldloc, _rc);
        EmitI8(PollInstructions - 1);
        _il.Emit(OpCodes.Or);
        _il.Emit(OpCodes.Stloc, _checkAt!);
        _il.Emit(OpCodes.Ldloc, _checkAt!);
        _il.Emit(OpCodes.Ldloc, _loopLimit!);
        _il.Emit(OpCodes.Ble, keep);
        _il.Emit(OpCodes.Ldloc, _loopLimit!);
        _il.Emit(OpCodes.Stloc, _checkAt!);
        _il.MarkLabel(keep);
    }

    /// <summary>
    /// An edge inside a loop (a self-loop's back edge, an edge between region blocks), the retired count already
    /// advanced: one compare with <see cref="_checkAt"/> per edge, then on to <paramref name="target"/>. Past it, the
    /// edge leaves to <paramref name="leave"/> once the count passed the limit taken on entry (the budget allows no
    /// other whole block or iteration of <paramref name="count"/> instructions, or a timer is due: what the vCPU's own
    /// run sets), and otherwise, as the count passed a multiple of <see cref="PollInstructions"/>, looks at what other
    /// threads set (<see cref="EmitOtherThreadChecksNow"/>), so they are heard within about that many instructions.
    /// </summary>
    private void EmitLoopChecks(Label target, Label leave, int count)
    {
        _il.Emit(OpCodes.Ldloc, _rc);
        _il.Emit(OpCodes.Ldloc, _checkAt!);
        _il.Emit(OpCodes.Ble, target);
        _il.Emit(OpCodes.Ldloc, _rc);
        _il.Emit(OpCodes.Ldloc, _loopLimit!);
        _il.Emit(OpCodes.Bgt, leave);
        EmitOtherThreadChecksNow(leave, count);
        EmitNextCheck();
        _il.Emit(OpCodes.Br, target);
    }

    /// <summary>
    /// Leaves to <paramref name="leave"/> on an exit request, a remote code write or a TLB flush request; when the
    /// platform asks for attention, leaves unless <see cref="InterpreterVcpu.JitMayIterate"/> allows
    /// <paramref name="count"/> more instructions (called with the state written back, see <see cref="EmitWriteBack"/>).
    /// </summary>
    private void EmitOtherThreadChecksNow(Label leave, int count)
    {
        foreach (var f in (FieldInfo[])[ExitRequestedField, RemoteCodeWriteField, WriteTlbFlushField])
        {
            _il.Emit(OpCodes.Ldarg_1);
            _il.Emit(OpCodes.Volatile);
            _il.Emit(OpCodes.Ldfld, f);
            _il.Emit(OpCodes.Brtrue, leave);
        }

        var go = _il.DefineLabel();
        _il.Emit(OpCodes.Ldloc, _plat!);
        _il.Emit(OpCodes.Brfalse, go);
        _il.Emit(OpCodes.Ldloc, _plat!);
        _il.Emit(OpCodes.Volatile);
        _il.Emit(OpCodes.Ldfld, AttentionField);
        _il.Emit(OpCodes.Brfalse, go);
        EmitMayIterate(count, leave);
        _il.MarkLabel(go);
    }

    /// <summary>Leaves to <paramref name="leave"/> unless <see cref="InterpreterVcpu.JitMayIterate"/> allows <paramref name="count"/> more instructions; the state is written back for the call (<see cref="EmitCallOut"/>).</summary>
    private void EmitMayIterate(int count, Label leave)
    {
        EmitTest(MayIterateMethod, count);
        _il.Emit(OpCodes.Brfalse, leave);
    }

    /// <summary>Pushes what the vCPU's <paramref name="test"/> (a bool method of one int) says for <paramref name="arg"/>, called through <see cref="EmitCallOut"/>.</summary>
    private void EmitTest(MethodInfo test, int arg)
    {
        var result = _testResult ??= _il.DeclareLocal(typeof(bool));
        EmitCallOut(() =>
        {
            _il.Emit(OpCodes.Ldarg_1);
            EmitI4(arg);
            _il.Emit(OpCodes.Call, test);
            _il.Emit(OpCodes.Stloc, result);
        });
        _il.Emit(OpCodes.Ldloc, result);
    }

    private LocalBuilder? _testResult;

    /// <summary>
    /// A call after which compiled code goes on (<paramref name="call"/>, which leaves nothing on the stack). In a
    /// method that loops, the state is written back before it (unless <paramref name="written"/>: a sync did) and the
    /// registers, the pending flag operands and the retired count are read back after it (<see cref="EmitReload"/>),
    /// so that none of the locals holding guest state is live across a call: the .NET JIT keeps such a local in
    /// memory, stored wherever it is defined, the loop included, so the loop's own values would make a round trip
    /// through memory every iteration. The written-back state is what the locals hold, and the calls made this way
    /// change no register or flag. A method without a loop keeps its locals across the call.
    /// </summary>
    private void EmitCallOut(Action call, bool written = false)
    {
        if (_loops && !written)
        {
            EmitWriteBack();
        }

        call();
        EmitReload();
    }

    /// <summary>In a method that loops, reads back what <see cref="EmitWriteBack"/> wrote: the registers, the pending flag operands, the retired count.</summary>
    private void EmitReload()
    {
        if (!_loops)
        {
            return;
        }

        LoadAllRegs();
        EmitFlagLoad();
        EmitLoadRetired();
    }

    /// <summary>The vCPU's retired count into <see cref="_rc"/>.</summary>
    private void EmitLoadRetired()
    {
        _il.Emit(OpCodes.Ldarg_1);
        _il.Emit(OpCodes.Ldfld, RetiredField);
        _il.Emit(OpCodes.Stloc, _rc);
    }

    /// <summary>
    /// The end of an iteration of a self-loop: count it, and run the next one when the budget allows a whole one
    /// and nothing needs the run loop. A block without interpreter calls cannot change the vCPU's own conditions
    /// (pending interrupt, shadow, debug state), so only the limit computed on entry and what other threads set
    /// are checked; a block with calls checks everything.
    /// </summary>
    private void EmitBackEdge(int n, ulong startRip)
    {
        EmitRetire(n);
        var leave = _il.DefineLabel();
        if (_hasFallback)
        {
            EmitMayIterate(n, leave);
            _il.Emit(OpCodes.Br, _headLabel);
        }
        else
        {
            EmitLoopChecks(_headLabel, leave, n);
        }

        _il.MarkLabel(leave);
        EmitLeave(startRip, -1);
    }

    private Label _headLabel;

    // ---- Operations ----------------------------------------------------------------------------------

    private void EmitAlu(int i)
    {
        ref Op op = ref _ops[i];
        int size = op.Inline is InlineOp.AluRR64 or InlineOp.AluRI64 ? 8 : op.Size;
        (byte k0, byte k1) = op.Inline switch
        {
            InlineOp.AluRR or InlineOp.AluRR64 => (OpKindX.Reg, OpKindX.Reg),
            InlineOp.AluRI or InlineOp.AluRI64 => (OpKindX.Reg, OpKindX.Imm),
            _ => (op.K0, op.K1),
        };
        bool writes = op.Sub < Translator.AluCmp;
        bool carryIn = IsCarryIn(in op);
        if (carryIn)
        {
            // ADC/SBB: the carry in first, from the flags before (a call when they are not known here; no operand is live across it).
            EmitCarry();
            _il.Emit(OpCodes.Stloc, _cin ??= _il.DeclareLocal(typeof(ulong)));
        }

        if (k1 == OpKindX.Mem)
        {
            // The memory source first, so the register operand is not live across its slow path's call.
            EmitSource(in op, k1, size, i);
            _il.Emit(OpCodes.Stloc, _tb);
            GetReg(op.R0, size);
            _il.Emit(OpCodes.Stloc, _ta);
        }
        else
        {
            if (k0 == OpKindX.Mem)
            {
                EmitLinear(in op);
                EmitRead(size, i, rmw: writes);
                _il.Emit(OpCodes.Ldloc, _val);
            }
            else
            {
                GetReg(op.R0, size);
            }

            _il.Emit(OpCodes.Stloc, _ta);
            EmitSource(in op, k1, size, i);
            _il.Emit(OpCodes.Stloc, _tb);
        }

        _il.Emit(OpCodes.Ldloc, _ta);
        _il.Emit(OpCodes.Ldloc, _tb);
        int kind;
        switch (op.Sub)
        {
            case Translator.AluAdd:
                _il.Emit(OpCodes.Add);
                kind = LzAdd;
                break;
            case Translator.AluAdc:
                _il.Emit(OpCodes.Add);
                _il.Emit(OpCodes.Ldloc, _cin!);
                _il.Emit(OpCodes.Add);
                kind = LzAdc;
                break;
            case Translator.AluSbb:
                _il.Emit(OpCodes.Sub);
                _il.Emit(OpCodes.Ldloc, _cin!);
                _il.Emit(OpCodes.Sub);
                kind = LzSbb;
                break;
            case Translator.AluSub:
            case Translator.AluCmp:
                _il.Emit(OpCodes.Sub);
                kind = LzSub;
                break;
            case Translator.AluOr:
                _il.Emit(OpCodes.Or);
                kind = LzLogic;
                break;
            case Translator.AluXor:
                _il.Emit(OpCodes.Xor);
                kind = LzLogic;
                break;
            default:
                _il.Emit(OpCodes.And);
                kind = LzLogic;
                break;
        }

        if (kind != LzLogic && size < 8)
        {
            EmitI8(unchecked((long)Mask(size)));
            _il.Emit(OpCodes.And);
        }

        _il.Emit(OpCodes.Stloc, _fr);
        if (kind == LzLogic)
        {
            _il.Emit(OpCodes.Ldloc, _fr);
            _il.Emit(OpCodes.Stloc, _fa);
        }
        else
        {
            _il.Emit(OpCodes.Ldloc, _ta);
            _il.Emit(OpCodes.Stloc, _fa);
            if (k1 != OpKindX.Imm)
            {
                _il.Emit(OpCodes.Ldloc, _tb);
                _il.Emit(OpCodes.Stloc, _fb);
            }

            if (carryIn)
            {
                _il.Emit(OpCodes.Ldloc, _cin!);
                _il.Emit(OpCodes.Stloc, _fcf);
            }
        }

        SetFlags(kind, size);
        _fbImm = kind == LzLogic ? 0 : k1 == OpKindX.Imm ? unchecked((long)op.Imm) : null;
        if (!writes)
        {
            return;
        }

        if (k0 == OpKindX.Mem)
        {
            EmitWrite(size, _fr, i);
        }
        else
        {
            _il.Emit(OpCodes.Ldloc, _fr);
            SetReg(op.R0, size);
        }
    }

    private void EmitIncDec(int i)
    {
        ref Op op = ref _ops[i];
        bool reg = op.Inline == InlineOp.IncDecR64 || op.K0 == OpKindX.Reg;
        int size = op.Inline == InlineOp.IncDecR64 ? 8 : op.Size;

        // Where the carry INC/DEC keep is: left where it is when the producer before is known (computed where it is
        // read), else computed now, first: when it takes a call (flags not known here), the operand is not live across it.
        var (cfKind, cfSize) = CarrySource(Flags);
        long? fbImm = _fbImm;

        // (Flags a later op overwrites before anything reads or stores them need no carry: none is computed, so no call.)
        bool compute = cfKind == Unknown && _flagKind is not (LzInc or LzDec) && !(reg && FlagsDeadAfter(_ops, _region[_cur].Count, i, _bitness));
        if (compute)
        {
            EmitCarry();
            _il.Emit(OpCodes.Stloc, _tc);
        }

        EmitLoadRmOperand(in op, size, i, reg);
        _il.Emit(OpCodes.Ldloc, _ta);
        _il.Emit(OpCodes.Ldc_I4_1);
        _il.Emit(OpCodes.Conv_U8);
        _il.Emit(op.Sub == 0 ? OpCodes.Add : OpCodes.Sub);
        EmitTruncate(size);

        _il.Emit(OpCodes.Stloc, _fr);
        if (compute)
        {
            _il.Emit(OpCodes.Ldloc, _tc);
            _il.Emit(OpCodes.Stloc, _fcf);
        }

        // The operand and the 1 are not kept: the flag store derives the operand from the result (fewer live locals).
        SetFlags(op.Sub == 0 ? LzInc : LzDec, size);
        (_cfKind, _cfSize, _fbImm) = (cfKind, cfSize, fbImm);
        EmitStoreRmResult(in op, size, i, reg, _fr);
    }

    /// <summary>
    /// Where the carry of an INC/DEC after flags <paramref name="f"/> is left: the producer's kind and size for ADD, SUB
    /// and logic (operands in the flag locals, or 0), INC/DEC's own place for INC/DEC, else <see cref="Unknown"/> (computed
    /// into <see cref="_fcf"/>). <see cref="ExitFlags"/> follows the same rule.
    /// </summary>
    private static (int Kind, int Size) CarrySource(FlagState f) => f.Kind switch
    {
        LzAdd or LzSub => (f.Kind, f.Size),
        LzLogic => (LzLogic, 0),
        LzInc or LzDec => (f.CfKind, f.CfSize),
        _ => (Unknown, 0),
    };

    /// <summary>Pushes the source operand of op <paramref name="i"/> (register R1, immediate, or memory read) as a 64-bit value.</summary>
    private void EmitSource(in Op op, byte kind, int size, int i)
    {
        switch (kind)
        {
            case OpKindX.Reg:
                GetReg(op.R1, size);
                break;
            case OpKindX.Imm:
                EmitI8(unchecked((long)op.Imm));
                break;
            default:
                EmitLinear(in op);
                EmitRead(size, i, rmw: false);
                _il.Emit(OpCodes.Ldloc, _val);
                break;
        }
    }

    private void EmitMov(int i)
    {
        ref Op op = ref _ops[i];
        int size = op.Size;
        EmitSource(in op, op.K1, size, i);

        if (op.K0 == OpKindX.Reg)
        {
            SetReg(op.R0, size);
            return;
        }

        _il.Emit(OpCodes.Stloc, _tb);
        EmitLinear(in op);
        EmitWrite(size, _tb, i);
    }

    private void EmitMovx(int i)
    {
        ref Op op = ref _ops[i];
        if (op.K1 == OpKindX.Reg)
        {
            GetReg(op.R1, op.Size2);
        }
        else
        {
            EmitLinear(in op);
            EmitRead(op.Size2, i, rmw: false);
            _il.Emit(OpCodes.Ldloc, _val);
        }

        if (op.Inline == InlineOp.Movsx)
        {
            switch (op.Size2)
            {
                case 1: _il.Emit(OpCodes.Conv_I1); _il.Emit(OpCodes.Conv_I8); break;
                case 2: _il.Emit(OpCodes.Conv_I2); _il.Emit(OpCodes.Conv_I8); break;
                case 4: _il.Emit(OpCodes.Conv_I4); _il.Emit(OpCodes.Conv_I8); break;
                default: break;
            }

            if (op.Size < 8)
            {
                EmitI8(unchecked((long)Mask(op.Size)));
                _il.Emit(OpCodes.And);
            }
        }

        SetReg(op.R0, op.Size);
    }

    // ---- Stack, conditional moves, SETcc, IMUL, shifts -------------------------------------------------

    /// <summary>RSP minus <paramref name="size"/> into <see cref="_lin"/> (64-bit mode: the stack is flat).</summary>
    private void EmitStackSlot(int size)
    {
        _il.Emit(OpCodes.Ldloc, _reg[4]!);
        EmitI8((long)size);
        _il.Emit(OpCodes.Sub);
        _il.Emit(OpCodes.Stloc, _lin);
    }

    /// <summary>RSP minus <paramref name="size"/> into RSP: the commit of a PUSH or CALL whose store (at that address) succeeded.</summary>
    private void EmitPushRsp(int size)
    {
        _il.Emit(OpCodes.Ldloc, _reg[4]!);
        EmitI8((long)size);
        _il.Emit(OpCodes.Sub);
        StoreReg(4);
    }

    private void EmitPush(int i)
    {
        ref Op op = ref _ops[i];
        int size = op.Size;
        if (op.K0 == OpKindX.Reg)
        {
            GetReg(op.R0, size);
        }
        else
        {
            EmitI8(unchecked((long)op.Imm));
        }

        _il.Emit(OpCodes.Stloc, _tb);
        EmitStackSlot(size);
        EmitWrite(size, _tb, i, () => EmitPushRsp(size), op.Next);
    }

    private void EmitPop(int i)
    {
        ref Op op = ref _ops[i];
        int size = op.Size;
        _il.Emit(OpCodes.Ldloc, _reg[4]!);
        _il.Emit(OpCodes.Stloc, _lin);
        EmitRead(size, i, rmw: false);

        // RSP moves first, so POP RSP leaves the popped value in RSP.
        _il.Emit(OpCodes.Ldloc, _reg[4]!);
        EmitI8((long)size);
        _il.Emit(OpCodes.Add);
        StoreReg(4);
        _il.Emit(OpCodes.Ldloc, _val);
        SetReg(op.R0, size);
    }

    private void EmitCall(int i)
    {
        ref Op op = ref _ops[i];
        EmitI8(unchecked((long)op.Next));
        _il.Emit(OpCodes.Stloc, _tb);
        EmitStackSlot(8);
        EmitWrite(8, _tb, i, () => EmitPushRsp(8), op.Target);
        EmitEdge(i + 1, op.Target, 0);
    }

    private void EmitRet(int i)
    {
        ref Op op = ref _ops[i];
        _il.Emit(OpCodes.Ldloc, _reg[4]!);
        _il.Emit(OpCodes.Stloc, _lin);
        EmitRead(8, i, rmw: false);
        _il.Emit(OpCodes.Ldloc, _reg[4]!);
        EmitI8(8 + (long)op.Imm);
        _il.Emit(OpCodes.Add);
        StoreReg(4);
        EmitExpectedTarget(i + 1, _val);
        EmitRetire(i + 1);
        EmitWriteBack();
        EmitSetRip(_val);
        EmitChain(0, _val);
    }

    /// <summary>
    /// At the computed exit of a region block (its <paramref name="retired"/> instructions done but not yet counted,
    /// the target in <paramref name="target"/>): when the region expects a block there (<see cref="FormRegion"/>), a
    /// branch into that block for an equal target; the code after it leaves the method as without a region.
    /// </summary>
    private void EmitExpectedTarget(int retired, LocalBuilder target)
    {
        if (_region.Length < 2 || !_speculated.TryGetValue(_region[_cur], out var expected))
        {
            return;
        }

        ulong rip = OpStart(in expected.Ops[0]);
        int k = RegionIndex(rip);
        if (k < 0)
        {
            return;
        }

        var other = _il.DefineLabel();
        _il.Emit(OpCodes.Ldloc, target);
        EmitI8(unchecked((long)rip));
        _il.Emit(OpCodes.Bne_Un, other);
        EmitInternalEdge(retired, rip, k);
        _il.MarkLabel(other);
    }

    private void EmitCmov(int i)
    {
        ref Op op = ref _ops[i];
        int size = op.Size;
        EmitSource(in op, op.K1, size, i);
        _il.Emit(OpCodes.Stloc, _tb);
        var skip = _il.DefineLabel();
        var done = _il.DefineLabel();
        EmitCondition(op.Sub);
        _il.Emit(OpCodes.Brfalse, skip);
        _il.Emit(OpCodes.Ldloc, _tb);
        SetReg(op.R0, size);
        _il.Emit(OpCodes.Br, done);
        _il.MarkLabel(skip);
        if (size == 4)
        {
            // A 32-bit CMOVcc writes its destination (clearing the upper half) whether or not it moves.
            GetReg(op.R0, 4);
            SetReg(op.R0, 4);
        }

        _il.MarkLabel(done);
    }

    private void EmitSetcc(int i)
    {
        ref Op op = ref _ops[i];
        if (op.K0 == OpKindX.Reg)
        {
            EmitCondition(op.Sub);
            _il.Emit(OpCodes.Conv_U8);
            SetReg(op.R0, 1);
            return;
        }

        EmitCondition(op.Sub);
        _il.Emit(OpCodes.Conv_U8);
        _il.Emit(OpCodes.Stloc, _tb);
        EmitLinear(in op);
        EmitWrite(1, _tb, i);
    }

    private void EmitImul(int i)
    {
        ref Op op = ref _ops[i];
        int size = op.Size;
        if (op.Size2 == 0xFF)
        {
            // IMUL r, r/m, imm
            EmitSource(in op, op.K1, size, i);
            _il.Emit(OpCodes.Stloc, _ta);
            EmitI8(unchecked((long)op.Imm));
            _il.Emit(OpCodes.Stloc, _tb);
        }
        else
        {
            // The source first (it may be a memory read with a slow path's call), then the register.
            EmitSource(in op, op.K1, size, i);
            _il.Emit(OpCodes.Stloc, _tb);
            GetReg(op.R0, size);
            _il.Emit(OpCodes.Stloc, _ta);
        }

        if (ImulDeadFlags && FlagsDeadAfter(_ops, _region[_cur].Count, i, _bitness))
        {
            // A later op of the block sets every flag before anything reads them: the product alone (its low bytes are
            // the same signed or unsigned), without the high half that CF and OF need.
            _il.Emit(OpCodes.Ldloc, _ta);
            _il.Emit(OpCodes.Ldloc, _tb);
            _il.Emit(OpCodes.Mul);
            EmitTruncate(size);
            SetReg(op.R0, size);
            return;
        }

        var overflow = _imulOut ??= _il.DeclareLocal(typeof(ulong));
        _il.Emit(OpCodes.Ldloc, _ta);
        _il.Emit(OpCodes.Ldloc, _tb);
        EmitI4(size);
        _il.Emit(OpCodes.Ldloca, overflow);
        _il.Emit(OpCodes.Call, ImulMethod);
        _il.Emit(OpCodes.Stloc, _fr);
        _il.Emit(OpCodes.Ldloc, overflow);
        _il.Emit(OpCodes.Stloc, _fcf);
        _il.Emit(OpCodes.Ldloc, _ta);
        _il.Emit(OpCodes.Stloc, _fa);
        SetFlags(LzShift, size);
        _fbImm = 0;
        _il.Emit(OpCodes.Ldloc, _fr);
        SetReg(op.R0, size);
    }

    private LocalBuilder? _imulOut;

    /// <summary>IMUL whose flags a later op overwrites computes the product alone (<c>VIRT_INTERPRETER_JIT_IMUL_DEAD_FLAGS=0</c> always computes CF and OF, for comparison).</summary>
    private static readonly bool ImulDeadFlags = Environment.GetEnvironmentVariable("VIRT_INTERPRETER_JIT_IMUL_DEAD_FLAGS") != "0";

    private LocalBuilder? _divQ, _divR;

    /// <summary>
    /// DIV (<c>Sub</c> 2) or IDIV (3) as the interpreter runs it: the operand read first, then RDX:RAX (AX for bytes)
    /// divided by it (<see cref="InterpreterVcpu.Divide"/>); a divisor of 0 or a quotient that does not fit raises #DE through
    /// <see cref="InterpreterVcpu.JitDivideError"/> with the state written back as before the instruction (a memory
    /// fault's slow path does the same). The flags are left as they are (the interpreter leaves them).
    /// </summary>
    private void EmitDivide(int i)
    {
        ref Op op = ref _ops[i];
        int size = op.Size;
        EmitPushRm(in op, size, i, op.K0 == OpKindX.Reg, rmw: false);
        _il.Emit(OpCodes.Stloc, _tb);
        var q = _divQ ??= _il.DeclareLocal(typeof(ulong));
        var r = _divR ??= _il.DeclareLocal(typeof(ulong));
        GetReg(0, size == 1 ? 2 : size);
        if (size == 1)
        {
            _il.Emit(OpCodes.Ldc_I4_0);
            _il.Emit(OpCodes.Conv_U8);
        }
        else
        {
            GetReg(2, size);
        }

        _il.Emit(OpCodes.Ldloc, _tb);
        EmitI4(size);
        _il.Emit(op.Sub == 3 ? OpCodes.Ldc_I4_1 : OpCodes.Ldc_I4_0);
        _il.Emit(OpCodes.Ldloca, q);
        _il.Emit(OpCodes.Ldloca, r);
        _il.Emit(OpCodes.Call, DivideMethod);
        var ok = _il.DefineLabel();
        _il.Emit(OpCodes.Brtrue, ok);
        EmitSync(i);
        _il.Emit(OpCodes.Ldarg_1);
        EmitSlowBlock();
        _il.Emit(OpCodes.Call, DivideErrorMethod);
        _il.Emit(OpCodes.Ret);
        _il.MarkLabel(ok);
        if (size == 1)
        {
            _il.Emit(OpCodes.Ldloc, q);
            SetReg(0, 1);
            _il.Emit(OpCodes.Ldloc, r);
            SetReg(16, 1);
        }
        else
        {
            _il.Emit(OpCodes.Ldloc, q);
            SetReg(0, size);
            _il.Emit(OpCodes.Ldloc, r);
            SetReg(2, size);
        }
    }

    /// <summary>The carry in of an ADC/SBB, computed before its operands are loaded.</summary>
    private LocalBuilder? _cin;

    private LocalBuilder? _mulLo, _imulLo;

    // Looked up when first needed: a reflection lookup on Math at the compiler's type initialisation would delay the
    // first compiled block of every process.
    private static MethodInfo? _bigMulUnsigned, _bigMulSigned, _divideMethod, _divideErrorMethod;

    private static MethodInfo BigMulUnsigned =>
        _bigMulUnsigned ??= typeof(Math).GetMethod(nameof(Math.BigMul), [typeof(ulong), typeof(ulong), typeof(ulong).MakeByRefType()])!;

    private static MethodInfo BigMulSigned =>
        _bigMulSigned ??= typeof(Math).GetMethod(nameof(Math.BigMul), [typeof(long), typeof(long), typeof(long).MakeByRefType()])!;

    private static MethodInfo DivideMethod => _divideMethod ??= typeof(InterpreterVcpu).GetMethod(nameof(InterpreterVcpu.Divide), Any)!;

    private static MethodInfo DivideErrorMethod => _divideErrorMethod ??= Method(nameof(InterpreterVcpu.JitDivideError));

    /// <summary>
    /// One-operand MUL (<c>Sub</c> 0) or IMUL (1) as the interpreter runs it: RAX (AL, AX, EAX) times the operand into
    /// RDX:RAX (AX for bytes); CF and OF set when the high half is significant (MUL: not 0; IMUL: not the low half's sign
    /// extension), SF, ZF and PF from the low half, AF clear: the flags of <see cref="LzShift"/> with the low half as its
    /// result. 64-bit products through <see cref="Math.BigMul(ulong, ulong, out ulong)"/>; smaller ones fit in 64 bits.
    /// </summary>
    private void EmitMulDiv(int i)
    {
        ref Op op = ref _ops[i];
        int size = op.Size;
        int bits = size * 8;
        bool signed = op.Sub == 1;
        if (op.Sub >= 2)
        {
            EmitDivide(i);
            return;
        }

        // The operand first (a memory read may take its slow path's call), then RAX.
        EmitPushRm(in op, size, i, op.K0 == OpKindX.Reg, rmw: false);
        _il.Emit(OpCodes.Stloc, _tb);
        GetReg(0, size);
        _il.Emit(OpCodes.Stloc, _ta);
        if (size == 8)
        {
            _il.Emit(OpCodes.Ldloc, _ta);
            _il.Emit(OpCodes.Ldloc, _tb);
            if (signed)
            {
                var lo = _imulLo ??= _il.DeclareLocal(typeof(long));
                _il.Emit(OpCodes.Ldloca, lo);
                _il.Emit(OpCodes.Call, BigMulSigned);
                _il.Emit(OpCodes.Stloc, _tc);
                _il.Emit(OpCodes.Ldloc, lo);
                _il.Emit(OpCodes.Stloc, _fr);
            }
            else
            {
                var lo = _mulLo ??= _il.DeclareLocal(typeof(ulong));
                _il.Emit(OpCodes.Ldloca, lo);
                _il.Emit(OpCodes.Call, BigMulUnsigned);
                _il.Emit(OpCodes.Stloc, _tc);
                _il.Emit(OpCodes.Ldloc, lo);
                _il.Emit(OpCodes.Stloc, _fr);
            }
        }
        else
        {
            // The full product in 64 bits (_tmp): low half into _fr, high half into _tc.
            if (signed)
            {
                SignExtend(_ta, size);
                SignExtend(_tb, size);
            }
            else
            {
                _il.Emit(OpCodes.Ldloc, _ta);
                _il.Emit(OpCodes.Ldloc, _tb);
            }

            _il.Emit(OpCodes.Mul);
            _il.Emit(OpCodes.Stloc, _tmp);
            _il.Emit(OpCodes.Ldloc, _tmp);
            EmitI8(unchecked((long)Mask(size)));
            _il.Emit(OpCodes.And);
            _il.Emit(OpCodes.Stloc, _fr);
            _il.Emit(OpCodes.Ldloc, _tmp);
            EmitI4(bits);
            _il.Emit(OpCodes.Shr_Un);
            EmitI8(unchecked((long)Mask(size)));
            _il.Emit(OpCodes.And);
            _il.Emit(OpCodes.Stloc, _tc);
        }

        // CF and OF (as flag bits): the high half is not 0 (MUL) or not all copies of the low half's sign (IMUL).
        _il.Emit(OpCodes.Ldloc, _tc);
        if (signed)
        {
            SignExtend(_fr, size);
            EmitI4(63);
            _il.Emit(OpCodes.Shr);
            EmitTruncate(size);
        }
        else
        {
            _il.Emit(OpCodes.Ldc_I4_0);
            _il.Emit(OpCodes.Conv_U8);
        }

        _il.Emit(OpCodes.Ceq);
        _il.Emit(OpCodes.Ldc_I4_1);
        _il.Emit(OpCodes.Xor);
        _il.Emit(OpCodes.Conv_U8);
        EmitI8((long)(CfBit | OfBit));
        _il.Emit(OpCodes.Mul);
        _il.Emit(OpCodes.Stloc, _fcf);
        _il.Emit(OpCodes.Ldloc, _ta);
        _il.Emit(OpCodes.Stloc, _fa);
        SetFlags(LzShift, size);
        _fbImm = 0;
        if (size == 1)
        {
            _il.Emit(OpCodes.Ldloc, _tc);
            _il.Emit(OpCodes.Ldc_I4_8);
            _il.Emit(OpCodes.Shl);
            _il.Emit(OpCodes.Ldloc, _fr);
            _il.Emit(OpCodes.Or);
            SetReg(0, 2);
        }
        else
        {
            _il.Emit(OpCodes.Ldloc, _fr);
            SetReg(0, size);
            _il.Emit(OpCodes.Ldloc, _tc);
            SetReg(2, size);
        }
    }

    /// <summary>Two-operand IMUL of <paramref name="size"/> bytes: the truncated product, CF and OF (as flag bits) set when it overflowed.</summary>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveInlining)]
    internal static ulong Imul(ulong a, ulong b, int size, out ulong cfOf)
    {
        if (size == 8)
        {
            long h = Math.BigMul((long)a, (long)b, out long l);
            cfOf = h != (l >> 63) ? CfBit | OfBit : 0;
            return (ulong)l;
        }

        long p = InterpreterVcpu.SignExtend(a, size) * InterpreterVcpu.SignExtend(b, size);
        ulong lo = (ulong)p & Mask(size);
        cfOf = p != InterpreterVcpu.SignExtend(lo, size) ? CfBit | OfBit : 0;
        return lo;
    }

    /// <summary>Cuts the value on the stack to an operand of <paramref name="size"/> bytes (a quadword stays whole).</summary>
    private void EmitTruncate(int size)
    {
        if (size < 8)
        {
            EmitI8(unchecked((long)Mask(size)));
            _il.Emit(OpCodes.And);
        }
    }

    /// <summary>Loads the operand of a read-modify-write instruction, register <c>R0</c> when <paramref name="reg"/>, else memory, into <c>_ta</c>.</summary>
    private void EmitLoadRmOperand(in Op op, int size, int i, bool reg)
    {
        EmitPushRm(in op, size, i, reg, rmw: true);
        _il.Emit(OpCodes.Stloc, _ta);
    }

    /// <summary>
    /// Pushes operand 0: register <c>R0</c> when <paramref name="reg"/>, else the memory operand (checked for writing
    /// first when <paramref name="rmw"/>, as a read-modify-write's read is).
    /// </summary>
    private void EmitPushRm(in Op op, int size, int i, bool reg, bool rmw)
    {
        if (reg)
        {
            GetReg(op.R0, size);
        }
        else
        {
            EmitLinear(in op);
            EmitRead(size, i, rmw);
            _il.Emit(OpCodes.Ldloc, _val);
        }
    }

    /// <summary>Stores <paramref name="result"/> back to the operand <see cref="EmitLoadRmOperand"/> loaded.</summary>
    private void EmitStoreRmResult(in Op op, int size, int i, bool reg, LocalBuilder result)
    {
        if (reg)
        {
            _il.Emit(OpCodes.Ldloc, result);
            SetReg(op.R0, size);
        }
        else
        {
            EmitWrite(size, result, i);
        }
    }

    /// <summary>SHL/SAL/SHR/SAR by an immediate count that is not zero and below the operand width (ROL/ROR: <see cref="EmitRotate"/>).</summary>
    private void EmitShift(int i)
    {
        ref Op op = ref _ops[i];
        if (op.Sub is 0 or 1)
        {
            EmitRotate(i);
            return;
        }

        if (op.K1 == OpKindX.Reg)
        {
            EmitShiftByCl(i);
            return;
        }

        int size = op.Size;
        int bits = size * 8;
        int count = ShiftCount(in op);
        bool reg = op.K0 == OpKindX.Reg;
        EmitLoadRmOperand(in op, size, i, reg);
        switch (op.Sub)
        {
            case 5: // SHR
                _il.Emit(OpCodes.Ldloc, _ta);
                EmitI4(count);
                _il.Emit(OpCodes.Shr_Un);
                _il.Emit(OpCodes.Stloc, _fr);
                EmitBitOf(_ta, count - 1, signed: false);
                EmitBitOf(_ta, bits - 1, signed: false);
                EmitI4(11);
                _il.Emit(OpCodes.Shl);
                _il.Emit(OpCodes.Or);
                _il.Emit(OpCodes.Stloc, _fcf);
                break;
            case 7: // SAR
                SignExtend(_ta, size);
                EmitI4(count);
                _il.Emit(OpCodes.Shr);
                EmitTruncate(size);

                _il.Emit(OpCodes.Stloc, _fr);
                EmitBitOf(_ta, count - 1, signed: true, size);
                _il.Emit(OpCodes.Stloc, _fcf);
                break;
            default: // SHL, SAL
                _il.Emit(OpCodes.Ldloc, _ta);
                EmitI4(count);
                _il.Emit(OpCodes.Shl);
                EmitTruncate(size);

                _il.Emit(OpCodes.Stloc, _fr);

                // CF is the last bit shifted out; OF is CF xor the result's sign.
                EmitBitOf(_ta, bits - count, signed: false);
                _il.Emit(OpCodes.Stloc, _tc);
                _il.Emit(OpCodes.Ldloc, _tc);
                EmitBitOf(_fr, bits - 1, signed: false);
                _il.Emit(OpCodes.Ldloc, _tc);
                _il.Emit(OpCodes.Xor);
                EmitI4(11);
                _il.Emit(OpCodes.Shl);
                _il.Emit(OpCodes.Or);
                _il.Emit(OpCodes.Stloc, _fcf);
                break;
        }

        _il.Emit(OpCodes.Ldloc, _ta);
        _il.Emit(OpCodes.Stloc, _fa);
        SetFlags(LzShift, size);
        _fbImm = 0;
        EmitStoreRmResult(in op, size, i, reg, _fr);
    }

    /// <summary>
    /// ROL/ROR by an immediate count that is not zero (masked as the hardware masks it; a multiple of the width leaves
    /// the value and still sets CF and OF). The result is written first (a memory destination was checked for writing
    /// by the read), then <see cref="InterpreterVcpu.JitRotateFlags"/> merges CF and OF into the flags before it, which
    /// are stored for it: a rotate leaves SF, ZF, AF and PF as they were, so the compiler knows no producer after it.
    /// </summary>
    private void EmitRotate(int i)
    {
        ref Op op = ref _ops[i];
        int size = op.Size;
        int bits = size * 8;
        int c = ShiftCount(in op) % bits;
        bool rol = op.Sub == 0;
        bool reg = op.K0 == OpKindX.Reg;
        EmitLoadRmOperand(in op, size, i, reg);
        _il.Emit(OpCodes.Ldloc, _ta);
        if (c != 0)
        {
            EmitI4(rol ? c : bits - c);
            _il.Emit(OpCodes.Shl);
            _il.Emit(OpCodes.Ldloc, _ta);
            EmitI4(rol ? bits - c : c);
            _il.Emit(OpCodes.Shr_Un);
            _il.Emit(OpCodes.Or);
            EmitTruncate(size);
        }

        _il.Emit(OpCodes.Stloc, _tb);

        // ROL: CF is the result's low bit, OF is CF xor the result's sign. ROR: CF is the result's sign, OF the sign
        // xor the bit below it.
        EmitBitOf(_tb, rol ? 0 : bits - 1, signed: false);
        _il.Emit(OpCodes.Stloc, _tc);
        _il.Emit(OpCodes.Ldloc, _tc);
        EmitBitOf(_tb, rol ? bits - 1 : bits - 2, signed: false);
        _il.Emit(OpCodes.Ldloc, _tc);
        _il.Emit(OpCodes.Xor);
        EmitI4(11);
        _il.Emit(OpCodes.Shl);
        _il.Emit(OpCodes.Or);
        _il.Emit(OpCodes.Stloc, _tc);
        EmitStoreRmResult(in op, size, i, reg, _tb);
        EmitFlagsToState();
        EmitCallOut(() =>
        {
            _il.Emit(OpCodes.Ldarg_1);
            _il.Emit(OpCodes.Ldloc, _tc);
            _il.Emit(OpCodes.Call, RotateFlagsMethod);
        });
    }

    /// <summary>
    /// REP MOVS / REP STOS (64-bit addresses): <see cref="InterpreterVcpu.JitRepFast"/> moves the elements that lie in
    /// pages the TLB maps (forward, bounded per call) without any state written back; the registers
    /// are advanced here by the elements it moved. When RCX is not 0 after it (DF set, a TLB miss, a page boundary inside
    /// an element, MMIO, a code page, the bound), the state is written back and the interpreter continues the
    /// instruction from there (<see cref="InterpreterVcpu.JitStringStep"/>): it faults, exits or completes exactly as
    /// it would have from the start. Compiled code goes on after it only when it retired and nothing needs the run
    /// loop (the budget/timer limit of a loop is then taken afresh); otherwise the method returns after it. MOVS and
    /// STOS leave the flags alone, so what the compiler knows of them holds on both paths.
    /// </summary>
    private void EmitRepString(int i)
    {
        ref Op op = ref _ops[i];
        bool movs = op.Inline == InlineOp.Movs;
        int shift = System.Numerics.BitOperations.Log2(op.Size);
        var done = _il.DefineLabel();
        int size = op.Size, seg = op.Seg;
        EmitCallOut(() =>
        {
            _il.Emit(OpCodes.Ldarg_1);
            _il.Emit(OpCodes.Ldloc, _reg[1]!);
            _il.Emit(OpCodes.Ldloc, _reg[6]!);
            _il.Emit(OpCodes.Ldloc, _reg[7]!);
            _il.Emit(OpCodes.Ldloc, _reg[0]!);
            EmitI4(size);
            EmitI4(seg);
            _il.Emit(movs ? OpCodes.Ldc_I4_1 : OpCodes.Ldc_I4_0);
            _il.Emit(OpCodes.Call, RepFastMethod);
            _il.Emit(OpCodes.Stloc, _tmp);
        });
        _il.Emit(OpCodes.Ldloc, _reg[1]!);
        _il.Emit(OpCodes.Ldloc, _tmp);
        _il.Emit(OpCodes.Sub);
        StoreReg(1);
        foreach (int r in movs ? (int[])[7, 6] : [7])
        {
            _il.Emit(OpCodes.Ldloc, _reg[r]!);
            _il.Emit(OpCodes.Ldloc, _tmp);
            if (shift != 0)
            {
                EmitI4(shift);
                _il.Emit(OpCodes.Shl);
            }

            _il.Emit(OpCodes.Add);
            StoreReg(r);
        }

        _il.Emit(OpCodes.Ldloc, _reg[1]!);
        _il.Emit(OpCodes.Brfalse, done);

        // The rest of the instruction in the interpreter.
        EmitSync(i);
        EmitSetRip(OpStart(in op));
        _il.Emit(OpCodes.Ldarg_1);
        EmitLoadCurrentBlock();
        EmitI4(i);
        _il.Emit(OpCodes.Call, StringStepMethod);
        _il.Emit(OpCodes.Conv_I8);
        _il.Emit(OpCodes.Stloc, _tmp);
        if (_loops)
        {
            EmitLoadRetired();
        }

        var go = _il.DefineLabel();
        _il.Emit(OpCodes.Ldloc, _tmp);
        _il.Emit(OpCodes.Ldc_I4_2);
        _il.Emit(OpCodes.Conv_I8);
        _il.Emit(OpCodes.Beq, go);
        EmitRetiredAfterStep(i);
        _il.Emit(OpCodes.Ret);
        _il.MarkLabel(go);
        if (_loopLimit != null)
        {
            EmitTakeLoopLimit();
        }

        // The interpreter moved RCX, RSI and RDI; MOVS and STOS leave the flags as they were stored.
        if (_loops)
        {
            EmitReload();
        }
        else
        {
            LoadAllRegs();
        }

        if (_loopLimit != null)
        {
            EmitNextCheck();
        }

        _il.MarkLabel(done);
    }

    /// <summary>Pushes bit <paramref name="bit"/> of <paramref name="v"/> (sign-extended from <paramref name="size"/> bytes when <paramref name="signed"/>) as a ulong 0 or 1.</summary>
    private void EmitBitOf(LocalBuilder v, int bit, bool signed, int size = 8)
    {
        if (signed)
        {
            SignExtend(v, size);
        }
        else
        {
            _il.Emit(OpCodes.Ldloc, v);
        }

        if (bit != 0)
        {
            EmitI4(bit);
            _il.Emit(OpCodes.Shr_Un);
        }

        _il.Emit(OpCodes.Ldc_I4_1);
        _il.Emit(OpCodes.Conv_U8);
        _il.Emit(OpCodes.And);
    }
}
