using Virt.Cpu.Kvm;
using Virt.Testing;

namespace Virt.Cpu.Interpreter.Tests;

/// <summary>The two backends the interpreter is compared against: itself and KVM (the hardware oracle).</summary>
internal static class TestBackends
{
    /// <summary>Theory data: "interpreter" and "kvm".</summary>
    public static TheoryData<string> Both() => new() { "interpreter", "kvm" };

    /// <summary>The backend named <paramref name="name"/>; for "kvm", skips or fails as <see cref="HostRequirements.RequireKvm"/> says.</summary>
    public static IHypervisor Create(string name)
    {
        if (name == "kvm")
        {
            HostRequirements.RequireKvm();
            return new KvmHypervisor();
        }

        return new InterpreterHypervisor();
    }
}
