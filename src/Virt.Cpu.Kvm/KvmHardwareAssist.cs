namespace Virt.Cpu.Kvm;

/// <summary>
/// Whether this host's KVM runs guest kernel-mode code with hardware virtualization (Intel VT-x or AMD-V). A KVM without
/// it (a paravirtual KVM such as PVM, inside a cloud VM without nested virtualization) runs user-mode guest code
/// natively but emulates privileged code instruction by instruction, at well under a million instructions per second.
/// </summary>
internal static class KvmHardwareAssist
{
    private static readonly Lazy<string?> s_reason = new(() => Probe(ReadOrNull("/proc/cpuinfo"), Directory.Exists("/sys/module/kvm_pvm")));

    /// <summary>Why kernel-mode guest code is slow on this host's KVM, or <see langword="null"/> when it runs with hardware assistance.</summary>
    public static string? SlowKernelModeReason => s_reason.Value;

    /// <summary>The decision from the processor flags in <paramref name="cpuinfo"/> (the text of /proc/cpuinfo) and whether the PVM module is loaded.</summary>
    internal static string? Probe(string? cpuinfo, bool pvmLoaded)
    {
        if (pvmLoaded)
        {
            return "this host's KVM is paravirtual (the kvm_pvm module is loaded): kernel-mode guest code is emulated instruction by instruction";
        }

        if (cpuinfo is null)
        {
            return null; // nothing to go by: assume an ordinary KVM
        }

        foreach (var line in cpuinfo.Split('\n'))
        {
            if (!line.StartsWith("flags", StringComparison.Ordinal))
            {
                continue;
            }

            int colon = line.IndexOf(':', StringComparison.Ordinal);
            var flags = line[(colon + 1)..].Split(' ', StringSplitOptions.RemoveEmptyEntries);
            return flags.Contains("vmx") || flags.Contains("svm")
                ? null
                : "the host processor shows neither the vmx nor the svm flag, so KVM has no hardware virtualization here: kernel-mode guest code is emulated instruction by instruction";
        }

        return null;
    }

    private static string? ReadOrNull(string path)
    {
        try
        {
            return File.ReadAllText(path);
        }
        catch (IOException)
        {
            return null;
        }
        catch (UnauthorizedAccessException)
        {
            return null;
        }
    }
}
