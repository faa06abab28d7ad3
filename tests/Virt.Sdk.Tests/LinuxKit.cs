using Virt.Testing;

namespace Virt.Sdk.Tests;

/// <summary>The Linux guest kit (scripts/get-linux-guest.sh) and the appliance builders the tests share.</summary>
internal static class LinuxKit
{
    public static readonly string Kernel = Path.Combine(RepositoryPaths.LinuxGuestKit, "vmlinuz");

    public static readonly string Initrd = Path.Combine(RepositoryPaths.LinuxGuestKit, "initramfs.cpio");

    /// <summary>
    /// A 256 MiB appliance on the interpreter whose /init starts an interactive shell on the serial console. Its boot (the
    /// shared <see cref="BootedAppliance"/>) runs the kernel's crypto self-tests, which every other test boot skips
    /// (<see cref="KernelParameters.SkipCryptoSelfTests"/>): <c>LinuxGuestTests</c> checks that they passed.
    /// </summary>
    public static VirtualMachineBuilder Interactive(Stream console) => VirtualMachine.CreateBuilder()
        .WithInterpreter()
        .WithMemoryMiB(256)
        .WithLinuxKernel(Kernel)
        .WithInitrd(Initrd)
        .WithKernelCommandLine("quiet")
        .WithSerialConsole(console);
}
