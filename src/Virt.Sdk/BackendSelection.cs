using Virt.Cpu;
using Virt.Cpu.Interpreter;
using Virt.Cpu.Kvm;
using Virt.Cpu.Whp;

namespace Virt;

/// <summary>Which backend a VM runs on, and why that one.</summary>
/// <param name="Backend">The chosen backend.</param>
/// <param name="Reason">Why it was chosen, e.g. "KVM is available" or "KVM: /dev/kvm does not exist; using the interpreter".</param>
public sealed record BackendSelection(IHypervisor Backend, string Reason)
{
    /// <summary>The backend's short name (<c>kvm</c>, <c>whp</c>, <c>interpreter</c>).</summary>
    public string Name => Backend.Name;
}

/// <summary>Chooses a backend by <see cref="BackendKind"/>.</summary>
public static class BackendSelector
{
    /// <summary>The backend for <paramref name="kind"/>, without checking availability.</summary>
    public static IHypervisor Create(BackendKind kind) => kind switch
    {
        BackendKind.Kvm => new KvmHypervisor(),
        BackendKind.Whp => new WhpHypervisor(),
        BackendKind.Interpreter => new InterpreterHypervisor(),
        _ => throw new ArgumentOutOfRangeException(nameof(kind), kind, "Auto has no single backend; call Select."),
    };

    /// <summary>
    /// Chooses the backend: <paramref name="custom"/> if given, else the one <paramref name="kind"/> names
    /// (which must be available), else for <see cref="BackendKind.Auto"/> KVM, then WHP, then the interpreter.
    /// </summary>
    /// <exception cref="InvalidOperationException">The requested backend is not available; the message says why.</exception>
    public static BackendSelection Select(BackendKind kind, IHypervisor? custom = null) => Select(kind, custom, kernelModeGuest: false);

    /// <summary>
    /// Chooses the backend as <see cref="Select(BackendKind, IHypervisor?)"/> does. When <paramref name="kernelModeGuest"/>
    /// is set (the guest runs a kernel: Linux, Multiboot, or code that starts in real or protected mode),
    /// <see cref="BackendKind.Auto"/> passes over a hypervisor that emulates kernel-mode code
    /// (<see cref="HypervisorAvailability.SlowKernelMode"/>, e.g. a KVM without hardware virtualization) and says so in
    /// the reason; a backend requested by name is still used, with the limitation in the reason.
    /// </summary>
    /// <exception cref="InvalidOperationException">The requested backend is not available; the message says why.</exception>
    public static BackendSelection Select(BackendKind kind, IHypervisor? custom, bool kernelModeGuest)
    {
        if (custom is not null)
        {
            var a = custom.GetAvailability();
            return a.IsAvailable
                ? new BackendSelection(custom, $"{custom.Name} was given explicitly{Caveat(a, kernelModeGuest)}")
                : throw new InvalidOperationException($"The {custom.Name} backend is not available: {a.Reason}");
        }

        if (kind != BackendKind.Auto)
        {
            var backend = Create(kind);
            var a = backend.GetAvailability();
            if (!a.IsAvailable)
            {
                string alternative = kind == BackendKind.Interpreter ? "" : " Use WithBackend(BackendKind.Auto) or WithInterpreter() to run without a hypervisor.";
                throw new InvalidOperationException($"The {backend.Name} backend is not available: {a.Reason}{alternative}");
            }

            return new BackendSelection(backend, $"{backend.Name} was requested and is available{Caveat(a, kernelModeGuest)}");
        }

        var notes = new List<string>();
        foreach (var candidate in new[] { BackendKind.Kvm, BackendKind.Whp })
        {
            var backend = Create(candidate);
            var a = backend.GetAvailability();
            if (!a.IsAvailable)
            {
                notes.Add($"{backend.Name} unavailable ({a.Reason})");
                continue;
            }

            if (kernelModeGuest && a.SlowKernelMode is { } slow)
            {
                notes.Add($"{backend.Name} passed over for a guest that runs a kernel ({slow})");
                continue;
            }

            return new BackendSelection(backend, notes.Count == 0
                ? $"auto: {backend.Name} is available"
                : $"auto: {string.Join("; ", notes)}; {backend.Name} is available");
        }

        return new BackendSelection(new InterpreterHypervisor(), $"auto: {string.Join("; ", notes)}; using the interpreter");
    }

    private static string Caveat(HypervisorAvailability a, bool kernelModeGuest) =>
        kernelModeGuest && a.SlowKernelMode is { } slow ? $" (note: {slow}; a kernel will run very slowly)" : "";
}
