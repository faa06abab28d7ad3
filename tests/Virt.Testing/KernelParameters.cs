namespace Virt.Testing;

/// <summary>Kernel command-line parameters the tests give the guest kit's kernel.</summary>
public static class KernelParameters
{
    /// <summary>
    /// Skips the kernel's crypto self-tests (big-number and hash arithmetic at boot): about a quarter of a boot's CPU on
    /// the interpreter, and more of its wall time. Every test boot passes it except one: the shared appliance of the Sdk
    /// tests (<c>BootedAppliance</c>) boots with the self-tests, and
    /// <c>LinuxGuestTests.The_kernels_crypto_self_tests_pass_on_the_interpreter</c> checks that they ran and passed.
    /// </summary>
    public const string SkipCryptoSelfTests = "cryptomgr.notests";
}
