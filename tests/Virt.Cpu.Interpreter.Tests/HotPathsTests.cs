using System.Reflection;

namespace Virt.Cpu.Interpreter.Tests;

/// <summary>
/// The interpreter's hot paths are compiled fully optimised from their first call (never tier 0 or instrumented code,
/// which a Linux boot otherwise ran for most of its length), and a background thread compiles them ahead of the vCPUs.
/// </summary>
public sealed class HotPathsTests
{
    private const BindingFlags All = BindingFlags.Instance | BindingFlags.Static | BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.DeclaredOnly;

    [Theory]
    [InlineData(typeof(InterpreterVcpu), "RunCore")]
    [InlineData(typeof(InterpreterVcpu), "RunTiered")]
    [InlineData(typeof(InterpreterVcpu), "ExecuteOps")]
    [InlineData(typeof(InterpreterVcpu), "GetBlockSlow")]
    [InlineData(typeof(InterpreterVcpu), "Decode")]
    [InlineData(typeof(InterpreterVcpu), "ReadSlow")]
    [InlineData(typeof(InterpreterVcpu), "WriteSlow")]
    [InlineData(typeof(InterpreterVcpu), "Walk64")]
    [InlineData(typeof(InterpreterVcpu), "JitLinked")]
    [InlineData(typeof(InterpreterVcpu), "JitStep")]
    [InlineData(typeof(Translator), "Translate")]
    public void Methods_on_the_per_instruction_and_per_block_paths_skip_tiered_compilation(Type type, string name)
    {
        var methods = type.GetMethods(All).Where(m => m.Name == name).ToArray();
        Assert.NotEmpty(methods);
        Assert.All(methods, m => Assert.True(
            (m.MethodImplementationFlags & MethodImplAttributes.AggressiveOptimization) != 0,
            $"{type.Name}.{name} is not marked AggressiveOptimization, so a fresh process runs it as tier-0 code until the runtime promotes it."));
        Assert.Contains(HotPaths.Methods(), m => m.DeclaringType == type && m.Name == name);
    }

    [Fact]
    public void The_warm_up_compiles_every_hot_method_and_takes_the_instruction_loop_first()
    {
        var methods = HotPaths.Methods();
        Assert.Equal(nameof(InterpreterVcpu.ExecuteOps), methods[0].Name);
        Assert.Equal(methods.Count, methods.Distinct().Count());

        // Once per process: another test's partition may have started it already.
        HotPaths.Start();
        var deadline = DateTime.UtcNow.AddMinutes(2);
        while (HotPaths.Prepared < methods.Count && DateTime.UtcNow < deadline)
        {
            Thread.Sleep(10);
        }

        Assert.Equal(methods.Count, HotPaths.Prepared);
    }
}
