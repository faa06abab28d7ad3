using Virt.Testing;
using Xunit;

namespace Virt.Sdk.Tests;

/// <summary>Builders for the flat-guest tests that run on each backend the host has.</summary>
internal static class FlatGuestVm
{
    /// <summary>The backends a flat-guest theory runs on; KVM skips where the host has none.</summary>
    public static TheoryData<string> Backends => new() { "kvm", "interpreter" };

    /// <summary>A 16 MiB VM on <paramref name="backend"/> (<c>kvm</c> or <c>interpreter</c>); skips the test when KVM is asked for and missing.</summary>
    public static VirtualMachineBuilder Builder(string backend)
    {
        if (backend == "kvm")
        {
            HostRequirements.RequireKvm();
            return VirtualMachine.CreateBuilder().WithKvm().WithMemoryMiB(16);
        }

        return VirtualMachine.CreateBuilder().WithInterpreter().WithMemoryMiB(16);
    }
}
