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

/// <summary>Environment settings for the processes (samples, the virt tool) that tests start to boot the guest kit.</summary>
public static class InterpreterEnvironment
{
    /// <summary>The variable that turns the interpreter's JIT tier off by default in a process (InterpreterOptions.EnableJit).</summary>
    public const string JitVariable = "VIRT_INTERPRETER_JIT";

    /// <summary>
    /// <see cref="JitVariable"/>=0, for a boot whose test is about a sample or the tool rather than the interpreter: a
    /// Linux boot then costs about 40% less CPU (the JIT tier compiles thousands of kernel blocks that run only a few
    /// times during a boot). The JIT tier running a Linux guest is covered by the Sdk tests' boots, which keep it on,
    /// and by the samples that snapshot, restore and migrate.
    /// </summary>
    public const string JitOff = "0";
}
