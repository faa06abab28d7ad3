using Orleans;

namespace Virt.Orleans;

/// <summary>
/// What a <see cref="IVirtualMachineGrain"/> builds its VM from: exactly one of a flat guest image
/// (<see cref="FlatImage"/>), a Linux kernel (<see cref="KernelPath"/>, with an optional initrd and disks) or a
/// snapshot file (<see cref="SnapshotPath"/>), plus the machine's size and backend.
/// </summary>
/// <remarks>
/// Paths name files on the silo that builds or restores the VM. A VM can come back on any silo, so kernels, initrds,
/// disk images and snapshot files must be reachable under the same path from every silo (shared storage); the
/// VM's own snapshots go to the silo's <see cref="ISnapshotStore"/>.
/// </remarks>
[GenerateSerializer, Immutable]
public sealed record VirtualMachineSpec
{
    /// <summary>Guest RAM in MiB (ignored for <see cref="SnapshotPath"/>: the snapshot has its size).</summary>
    [Id(0)]
    public int MemoryMiB { get; init; } = 64;

    /// <summary>The number of vCPUs (ignored for <see cref="SnapshotPath"/>).</summary>
    [Id(1)]
    public int VcpuCount { get; init; } = 1;

    /// <summary>The CPU backend; <see cref="VirtualMachineBackend.Auto"/> lets the silo choose (for a snapshot: the one it was saved on).</summary>
    [Id(2)]
    public VirtualMachineBackend Backend { get; init; } = VirtualMachineBackend.Auto;

    /// <summary>A flat 64-bit guest image, loaded at <see cref="LoadAddress"/> and entered in long mode at <see cref="EntryPoint"/>.</summary>
    [Id(3)]
    public byte[]? FlatImage { get; init; }

    /// <summary>Where <see cref="FlatImage"/> is loaded in guest memory.</summary>
    [Id(4)]
    public ulong LoadAddress { get; init; } = 0x100000;

    /// <summary>Where the flat guest starts; 0 means <see cref="LoadAddress"/>.</summary>
    [Id(5)]
    public ulong EntryPoint { get; init; }

    /// <summary>A Linux kernel (bzImage or ELF vmlinux) on the silo's file system.</summary>
    [Id(6)]
    public string? KernelPath { get; init; }

    /// <summary>An initramfs for <see cref="KernelPath"/>.</summary>
    [Id(7)]
    public string? InitrdPath { get; init; }

    /// <summary>The kernel command line (the VM adds its console and device parameters).</summary>
    [Id(8)]
    public string? KernelCommandLine { get; init; }

    /// <summary>
    /// Disk images attached as virtio-blk devices, in this order (for a snapshot: the same images, in the order the saved
    /// VM had them). The grain writes an image only when it saves or stops the VM; in between the guest's writes go to a
    /// layer file next to it, so the image always holds the disk of the last snapshot (see docs/orleans.md, "Disks").
    /// </summary>
    [Id(9)]
    public string[] Disks { get; init; } = [];

    /// <summary>A snapshot file (<c>VirtualMachine.SaveSnapshotAsync</c>) to restore instead of building a new machine.</summary>
    [Id(10)]
    public string? SnapshotPath { get; init; }

    /// <summary>Attach a serial console (COM1) whose output the grain keeps (see <see cref="IVirtualMachineGrain.ReadConsoleAsync"/>).</summary>
    [Id(11)]
    public bool SerialConsole { get; init; } = true;

    /// <summary>Attach the debug-exit port, so the guest can stop itself with an exit code.</summary>
    [Id(12)]
    public bool DebugExit { get; init; }

    /// <summary>Track dirty pages (costs a little speed, lets <c>VirtualMachine.MigrateAsync</c> copy memory while the guest runs).</summary>
    [Id(13)]
    public bool DirtyPageTracking { get; init; }

    /// <summary>Whether <paramref name="other"/> describes the same machine (image bytes and disk lists compared by content).</summary>
    public bool Equals(VirtualMachineSpec? other) =>
        other is not null
        && MemoryMiB == other.MemoryMiB && VcpuCount == other.VcpuCount && Backend == other.Backend
        && (FlatImage is null ? other.FlatImage is null : other.FlatImage is not null && FlatImage.AsSpan().SequenceEqual(other.FlatImage))
        && LoadAddress == other.LoadAddress && EntryPoint == other.EntryPoint
        && KernelPath == other.KernelPath && InitrdPath == other.InitrdPath && KernelCommandLine == other.KernelCommandLine
        && (Disks ?? []).SequenceEqual(other.Disks ?? []) && SnapshotPath == other.SnapshotPath
        && SerialConsole == other.SerialConsole && DebugExit == other.DebugExit && DirtyPageTracking == other.DirtyPageTracking;

    /// <inheritdoc />
    public override int GetHashCode() =>
        HashCode.Combine(MemoryMiB, VcpuCount, Backend, FlatImage?.Length, KernelPath, SnapshotPath, Disks?.Length);

    /// <summary>Checks that the spec describes one machine, with a message that says what to change.</summary>
    /// <exception cref="ArgumentException">The spec is incomplete or contradicts itself.</exception>
    public void Validate()
    {
        int sources = (FlatImage is not null ? 1 : 0) + (KernelPath is not null ? 1 : 0) + (SnapshotPath is not null ? 1 : 0);
        if (sources != 1)
        {
            throw new ArgumentException(
                $"A VM spec needs exactly one of FlatImage, KernelPath and SnapshotPath; this one has {sources}. Set one of them.");
        }

        if (SnapshotPath is null)
        {
            if (MemoryMiB <= 0)
            {
                throw new ArgumentException($"MemoryMiB must be positive; it is {MemoryMiB}.");
            }

            if (VcpuCount <= 0)
            {
                throw new ArgumentException($"VcpuCount must be positive; it is {VcpuCount}.");
            }
        }

        if (FlatImage is { Length: 0 })
        {
            throw new ArgumentException("FlatImage is empty; give the guest's code.");
        }

        if (InitrdPath is not null && KernelPath is null)
        {
            throw new ArgumentException("InitrdPath is set without KernelPath; an initrd needs a kernel.");
        }

        if (Disks is null || Disks.Any(string.IsNullOrEmpty))
        {
            throw new ArgumentException("Disks must be a list of image paths, none of them empty.");
        }

        if (!Enum.IsDefined(Backend))
        {
            throw new ArgumentException($"Backend {(int)Backend} is not a VirtualMachineBackend value.");
        }
    }
}

/// <summary>The CPU backend a grain's VM runs on (the Orleans-serializable counterpart of <see cref="BackendKind"/>).</summary>
[GenerateSerializer]
public enum VirtualMachineBackend
{
    /// <summary>The best backend the silo's host offers.</summary>
    Auto = 0,

    /// <summary>Linux KVM.</summary>
    Kvm,

    /// <summary>The built-in x86-64 interpreter.</summary>
    Interpreter,

    /// <summary>The Windows Hypervisor Platform.</summary>
    Whp,
}
