using Virt.Cpu;

namespace Virt.Sandbox;

/// <summary>Creates the interpreter backend.</summary>
internal static class InterpreterBackend
{
    public static IHypervisor Create() => throw new PlatformNotSupportedException("The interpreter backend is not wired into Virt.Sandbox yet; use KVM.");
}
