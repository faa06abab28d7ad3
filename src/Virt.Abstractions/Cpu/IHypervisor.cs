namespace Virt.Cpu;

/// <summary>A CPU backend: KVM, the Windows Hypervisor Platform, or the interpreter.</summary>
public interface IHypervisor
{
    /// <summary>A short name such as <c>kvm</c>, <c>whp</c> or <c>interpreter</c>.</summary>
    string Name { get; }

    /// <summary>Whether the backend can run on this host now, and if not, why and what to do.</summary>
    HypervisorAvailability GetAvailability();

    /// <summary>Creates a partition with <paramref name="memory"/> mapped in.</summary>
    /// <exception cref="HypervisorException">The backend refused.</exception>
    IPartition CreatePartition(Memory.IGuestMemoryBacking memory, PartitionOptions options);
}

/// <summary>Whether a backend is usable here.</summary>
/// <param name="IsAvailable">Whether it can create partitions.</param>
/// <param name="Reason">When not available: why, and what to do about it. When available: a short description.</param>
public sealed record HypervisorAvailability(bool IsAvailable, string Reason)
{
    /// <summary>An available backend.</summary>
    public static HypervisorAvailability Available(string description) => new(true, description);

    /// <summary>An unavailable backend with the reason.</summary>
    public static HypervisorAvailability Unavailable(string reason) => new(false, reason);

    /// <summary>
    /// Set when the backend is available but runs guest kernel-mode code (CPL 0-2, real mode) far slower than user-mode
    /// code: why, e.g. a KVM without hardware virtualization that emulates privileged code instruction by instruction.
    /// <see langword="null"/> when every privilege level runs at the backend's full speed. Automatic backend choice
    /// passes over such a backend for guests that run a kernel.
    /// </summary>
    public string? SlowKernelMode { get; init; }
}

/// <summary>A hypervisor call failed. Carries the operation (ioctl or API function) and the OS error code.</summary>
public sealed class HypervisorException : Exception
{
    /// <summary>Creates the exception.</summary>
    public HypervisorException(string operation, int errorCode, string message)
        : base($"{operation} failed: {message} (error {errorCode})")
    {
        Operation = operation;
        ErrorCode = errorCode;
    }

    /// <summary>Creates the exception.</summary>
    public HypervisorException() { }

    /// <summary>Creates the exception.</summary>
    public HypervisorException(string message) : base(message) { }

    /// <summary>Creates the exception.</summary>
    public HypervisorException(string message, Exception innerException) : base(message, innerException) { }

    /// <summary>The failed operation, e.g. <c>KVM_CREATE_VM</c> or <c>WHvCreatePartition</c>.</summary>
    public string Operation { get; } = "";

    /// <summary>errno on Linux, HRESULT on Windows.</summary>
    public int ErrorCode { get; }
}
