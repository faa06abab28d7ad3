using System.Diagnostics.CodeAnalysis;
using System.Reflection;
using System.Runtime.CompilerServices;

namespace Virt.Cpu.Interpreter;

/// <summary>
/// The interpreter's hot paths, compiled fully optimised once per process, off the vCPU threads.
/// </summary>
/// <remarks>
/// <para>
/// The methods a guest runs through per instruction or per block (the run loops, <c>ExecuteOps</c> and the
/// handlers a kernel keeps using, block lookup and decoding, the memory slow paths and page walks, the helpers
/// compiled blocks call) are marked <see cref="MethodImplOptions.AggressiveOptimization"/>: the .NET runtime
/// compiles them fully optimised at their first call and never runs them as tier-0 or instrumented code.
/// </para>
/// <para>
/// Without that, tiered compilation kept them at tier 0 for most of a Linux boot: a method is promoted only
/// after the runtime's call-counting delay (100 ms without a method called for the first time), and a booting
/// guest keeps reaching handlers, decoder paths and devices it had not used before, so the delay kept being
/// extended; the run loop reached tier 1 after about four fifths of a boot's compiled blocks, and 38% of the vCPU
/// thread's samples were in tier-0 or instrumented code and the runtime's profile-count helper.
/// </para>
/// <para>
/// The price is the first call: such methods are not precompiled into ReadyToRun images and take longer to
/// compile than tier-0 code. <see cref="Start"/> compiles them on a background thread when the first backend is
/// created (<see cref="InterpreterHypervisor"/>'s constructor), so a short run finds most of them ready instead of compiling
/// them on its vCPU thread.
/// </para>
/// </remarks>
internal static class HotPaths
{
    private static int s_started;

    /// <summary>Methods compiled by the background thread so far (for tests and diagnostics).</summary>
    internal static int Prepared => Volatile.Read(ref s_prepared);

    private static int s_prepared;

    /// <summary>Starts compiling the hot paths on a background thread, once per process; later calls do nothing.</summary>
    public static void Start()
    {
        if (!RuntimeFeature.IsDynamicCodeCompiled || Interlocked.Exchange(ref s_started, 1) != 0)
        {
            // Without a JIT (NativeAOT) everything is precompiled already.
            return;
        }

        var thread = new Thread(PrepareAll) { IsBackground = true, Name = "Virt hot paths" };
        thread.Start();
    }

    /// <summary>The hot methods of the types that hold them, in the order they are compiled.</summary>
    internal static List<MethodInfo> Methods()
    {
        var list = new List<MethodInfo>();
        Collect(typeof(InterpreterVcpu), list);
        Collect(typeof(Translator), list);
        Collect(typeof(Jit.BlockCompiler), list);
        Collect(typeof(Jit.JitCandidates), list);

        // The instruction loop first: every guest needs it at once and it takes longest to compile (tens of milliseconds),
        // so this thread compiles it while a vCPU that already runs compiles the run loop and decoder it reaches before.
        // Then the smallest first: the memory paths and page walks any guest reaches soon, before the larger handlers of
        // instruction families that only some guests use.
        return [.. list.OrderBy(m => m.Name != nameof(InterpreterVcpu.ExecuteOps)).ThenBy(ILSize)];
    }

    private static void PrepareAll()
    {
        foreach (var m in Methods())
        {
            try
            {
                RuntimeHelpers.PrepareMethod(m.MethodHandle);
                Interlocked.Increment(ref s_prepared);
            }
            catch (Exception e) when (e is ArgumentException or NotSupportedException or InvalidOperationException)
            {
                // A method the runtime will not prepare ahead (it compiles at its first call instead): nothing is lost.
            }
        }
    }

    private static void Collect(
        [DynamicallyAccessedMembers(DynamicallyAccessedMemberTypes.PublicMethods | DynamicallyAccessedMemberTypes.NonPublicMethods)] Type type,
        List<MethodInfo> list)
    {
        const BindingFlags All = BindingFlags.Instance | BindingFlags.Static | BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.DeclaredOnly;
        foreach (var m in type.GetMethods(All))
        {
            if ((m.MethodImplementationFlags & MethodImplAttributes.AggressiveOptimization) != 0 && !m.ContainsGenericParameters)
            {
                list.Add(m);
            }
        }
    }

    private static int ILSize(MethodInfo m) => m.GetMethodBody()?.GetILAsByteArray()?.Length ?? 0;
}
