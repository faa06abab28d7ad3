using Virt.Cpu.Kvm;
using Virt.Testing;

namespace Virt.Cpu.Interpreter.Tests;

/// <summary>
/// The backends the interpreter is compared against: its first tier alone, its JIT tier with every block compiled
/// on first use, and KVM (the hardware oracle).
/// </summary>
internal static class TestBackends
{
    /// <summary>Theory data: "interpreter", "jit" and "kvm".</summary>
    public static TheoryData<string> Both() => new() { "interpreter", "jit", "kvm" };

    /// <summary>The interpreter with the JIT tier off: every instruction runs in the first tier.</summary>
    public static InterpreterHypervisor Interpreter() => new(new InterpreterOptions { EnableJit = false });

    /// <summary>The interpreter with the JIT tier at <paramref name="threshold"/> (0, the default: every block is compiled before it first runs).</summary>
    public static InterpreterHypervisor Jit(int threshold = 0) => new(new InterpreterOptions { EnableJit = true, JitThreshold = threshold });

    /// <summary>The backend named <paramref name="name"/>; for "kvm", skips or fails as <see cref="HostRequirements.RequireKvm"/> says.</summary>
    public static IHypervisor Create(string name)
    {
        if (name == "kvm")
        {
            HostRequirements.RequireKvm();
            return new KvmHypervisor();
        }

        return name == "jit" ? Jit() : Interpreter();
    }
}
