namespace Virt;

/// <summary>Which CPU backend runs a virtual machine.</summary>
public enum BackendKind
{
    /// <summary>
    /// The best backend this host offers: KVM on Linux, the Windows Hypervisor Platform on Windows,
    /// otherwise the interpreter. The VM's <see cref="VirtualMachine.BackendSelection"/> says which and why.
    /// </summary>
    Auto = 0,

    /// <summary>Linux KVM (<c>/dev/kvm</c>).</summary>
    Kvm,

    /// <summary>The built-in x86-64 interpreter: runs everywhere, counts instructions exactly.</summary>
    Interpreter,

    /// <summary>The Windows Hypervisor Platform.</summary>
    Whp,
}
