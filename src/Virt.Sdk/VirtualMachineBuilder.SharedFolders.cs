using Virt.Storage;

namespace Virt;

public sealed partial class VirtualMachineBuilder
{
    /// <summary>
    /// Shares the host directory <paramref name="hostPath"/> with the guest through a virtio-fs device named
    /// <paramref name="tag"/> (Linux hosts). The guest mounts it with <c>mount -t virtiofs TAG DIR</c>; with
    /// <paramref name="guestMountPoint"/> the kernel command line gets <c>virt.mount=TAG:DIR</c> (with <c>:ro</c> for
    /// a read-only share), which the guest kit's /init mounts before its ready marker. The guest cannot reach
    /// anything outside the directory; a read-only share refuses every change (EROFS). See docs/devices.md,
    /// "Shared folders", for the threat model and the owner policy.
    /// </summary>
    /// <param name="hostPath">An existing host directory.</param>
    /// <param name="tag">The share's name in the guest: 1 to 36 UTF-8 bytes, no whitespace, NUL, colon or comma; unique in the VM.</param>
    /// <param name="readOnly">Refuse every change.</param>
    /// <param name="guestMountPoint">Where the guest kit's /init mounts the share (an absolute path without whitespace, colon or comma), or null to mount it yourself.</param>
    /// <exception cref="ArgumentException">The tag or mount point is invalid, or the tag is already used.</exception>
    /// <exception cref="DirectoryNotFoundException">The directory does not exist.</exception>
    /// <exception cref="PlatformNotSupportedException">The host is not Linux.</exception>
    public VirtualMachineBuilder WithSharedFolder(string hostPath, string tag, bool readOnly = false, string? guestMountPoint = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(hostPath);
        VirtioFsDevice.ValidateTag(tag);
        if (!OperatingSystem.IsLinux())
        {
            throw new PlatformNotSupportedException("Shared folders need a Linux host (the device resolves names with openat(2) and /proc/self/fd).");
        }

        string fullPath = Path.GetFullPath(hostPath);
        if (!Directory.Exists(fullPath))
        {
            throw new DirectoryNotFoundException($"The shared folder '{fullPath}' does not exist or is not a directory; create it or pass another path.");
        }

        if (_config.SharedFolders.Any(s => s.Tag == tag))
        {
            throw new ArgumentException($"The VM already has a shared folder tagged '{tag}'; give each share its own tag.", nameof(tag));
        }

        if (guestMountPoint is not null
            && (!guestMountPoint.StartsWith('/') || guestMountPoint.Any(c => char.IsWhiteSpace(c) || c is ':' or ',' or '\0')))
        {
            throw new ArgumentException($"The guest mount point '{guestMountPoint}' must be an absolute path without whitespace, colons or commas, e.g. /mnt/share.", nameof(guestMountPoint));
        }

        var builder = AddVirtio("virtio-fs", context =>
        {
            var device = new VirtioFsDevice(fullPath, tag, readOnly);
            context.DisposeWithMachine(device);
            return device;
        });
        return new(builder._config with { SharedFolders = builder._config.SharedFolders.Add(new SharedFolderMount(tag, readOnly, guestMountPoint)) });
    }
}

/// <summary>A shared folder as the kernel command line announces it to the guest kit's /init.</summary>
/// <param name="Tag">The virtio-fs tag.</param>
/// <param name="ReadOnly">Whether the share is read-only (mounted with <c>-o ro</c>).</param>
/// <param name="GuestMountPoint">Where /init mounts it, or null when the guest mounts it itself.</param>
internal sealed record SharedFolderMount(string Tag, bool ReadOnly, string? GuestMountPoint)
{
    /// <summary>The <c>virt.mount=TAG:DIR[:ro]</c> parameter, or null without a mount point.</summary>
    public string? KernelParameter => GuestMountPoint is null ? null : $"virt.mount={Tag}:{GuestMountPoint}{(ReadOnly ? ":ro" : "")}";
}
