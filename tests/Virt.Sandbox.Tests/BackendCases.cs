using Virt.Testing;
using Xunit;

namespace Virt.Sandbox.Tests;

/// <summary>Theory data that runs each named case on KVM and on the interpreter, and the matching host check.</summary>
internal static class BackendCases
{
    /// <summary>Every name paired with <see cref="BackendKind.Kvm"/> and with <see cref="BackendKind.Interpreter"/>.</summary>
    public static TheoryData<string, BackendKind> OnBothBackends(IEnumerable<string> names)
    {
        var data = new TheoryData<string, BackendKind>();
        foreach (var name in names)
        {
            data.Add(name, BackendKind.Kvm);
            data.Add(name, BackendKind.Interpreter);
        }

        return data;
    }

    /// <summary>Skips (or fails under VIRT_REQUIRE_KVM=1) a KVM case on a host without KVM.</summary>
    public static void Require(BackendKind backend)
    {
        if (backend == BackendKind.Kvm)
        {
            HostRequirements.RequireKvm();
        }
    }
}
