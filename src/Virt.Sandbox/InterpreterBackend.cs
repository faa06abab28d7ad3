using Virt.Cpu;
using Virt.Cpu.Interpreter;

namespace Virt.Sandbox;

/// <summary>Creates the interpreter backend.</summary>
internal static class InterpreterBackend
{
    public static IHypervisor Create() => new InterpreterHypervisor();
}
