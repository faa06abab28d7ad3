using System.Buffers;
using System.Diagnostics;
using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace Virt.Storage;

/// <summary>Disk image formats.</summary>
public enum DiskFormat
{
    /// <summary>The disk's bytes, byte for byte.</summary>
    Raw,

    /// <summary>QEMU's copy-on-write format (versions 2 and 3), see <see cref="Qcow2BlockBackend"/>.</summary>
    Qcow2,

    /// <summary>This library's own overlay format, see <see cref="CopyOnWriteOverlay"/>.</summary>
    Overlay,
}

/// <summary>
/// Disk images as files: create a sparse raw image, create a copy-on-write overlay of one, open, commit and
/// delete them. Every failure is a <see cref="DiskImageException"/> (or an argument exception for a bad size)
/// whose message says what is wrong and what to do.
/// </summary>
public static class DiskImage
{
    /// <summary>The sector size every image size must be a multiple of.</summary>
    public const int SectorSize = 512;

    /// <summary>Creates a sparse raw image of <paramref name="size"/> bytes (no disk space is used until written).</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="size"/> is not a positive multiple of 512.</exception>
    /// <exception cref="DiskImageException">The file exists (and <paramref name="overwrite"/> is false) or is in use.</exception>
    public static void CreateRaw(string path, long size, bool overwrite = false)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        ValidateSize(size, nameof(size));
        using var handle = CreateFile(path, overwrite);
        RandomAccess.SetLength(handle, size);
    }

    /// <summary>
    /// Creates an overlay at <paramref name="overlayPath"/> over the image at <paramref name="basePath"/>: reads come
    /// from the base until written, writes go to the overlay, and the base is never written.
    /// </summary>
    /// <exception cref="DiskImageException">The base is missing or being written, or the overlay exists.</exception>
    public static void CreateOverlay(string overlayPath, string basePath, bool overwrite = false)
    {
        ArgumentException.ThrowIfNullOrEmpty(overlayPath);
        ArgumentException.ThrowIfNullOrEmpty(basePath);
        string fullBase = Path.GetFullPath(basePath);
        long capacity;
        if (DetectFormat(fullBase) == DiskFormat.Overlay)
        {
            throw new DiskImageException(fullBase, DiskImageError.InvalidFormat, $"The base image '{fullBase}' is itself an overlay; use a raw or qcow2 base.");
        }

        var baseImage = Open(fullBase, readOnly: true);
        try
        {
            capacity = baseImage.Capacity;
        }
        finally
        {
            baseImage.DisposeAsync().AsTask().GetAwaiter().GetResult();
        }

        if (capacity <= 0 || capacity % SectorSize != 0)
        {
            throw new DiskImageException(fullBase, DiskImageError.InvalidFormat,
                $"The base image '{fullBase}' is {capacity} bytes long, which is not a positive multiple of {SectorSize}.");
        }

        using var handle = CreateFile(overlayPath, overwrite);
        CopyOnWriteOverlay.Initialize(handle, fullBase, capacity);
    }

    /// <summary>
    /// Creates an image of <paramref name="format"/>: a sparse raw file, or an empty qcow2 image (version 3,
    /// <paramref name="clusterSize"/> bytes per cluster) optionally over <paramref name="backing"/> (a raw or qcow2
    /// image, recorded with its format; a relative path is taken relative to the new image's directory, as qemu does).
    /// <see cref="DiskFormat.Overlay"/> needs a backing file and is <see cref="CreateOverlay"/>.
    /// </summary>
    /// <param name="path">The new image.</param>
    /// <param name="size">Virtual size in bytes (a positive multiple of 512); 0 with a backing file takes the backing file's size.</param>
    /// <param name="format">The format to write.</param>
    /// <param name="backing">The backing image; null for none (raw images cannot have one).</param>
    /// <param name="overwrite">Replace an existing file.</param>
    /// <param name="clusterSize">qcow2 cluster size: a power of two from 512 to 2 MiB (default 64 KiB).</param>
    /// <param name="extendedL2">
    /// qcow2 only: extended L2 entries, which split every cluster into 32 subclusters that are allocated one by one,
    /// so a small write into an overlay copies one subcluster from the backing file rather than a whole cluster
    /// (<c>qemu-img create -o extended_l2=on</c>). Needs a cluster size of at least 16 KiB; readers older than
    /// QEMU 5.2 refuse such images.
    /// </param>
    /// <exception cref="ArgumentOutOfRangeException">The size or cluster size is invalid.</exception>
    /// <exception cref="ArgumentException">A raw image was given a backing file, or an overlay none.</exception>
    /// <exception cref="DiskImageException">The file exists, the backing file is missing, in use or damaged.</exception>
    public static void Create(string path, long size, DiskFormat format, string? backing = null, bool overwrite = false, int clusterSize = 1 << Qcow2Format.DefaultClusterBits, bool extendedL2 = false)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        if (extendedL2 && format != DiskFormat.Qcow2)
        {
            throw new ArgumentException($"Extended L2 entries are a qcow2 feature; a {format} image cannot have them.", nameof(extendedL2));
        }

        switch (format)
        {
            case DiskFormat.Raw:
                if (backing is not null)
                {
                    throw new ArgumentException("A raw image cannot have a backing file; use DiskFormat.Qcow2 or DiskFormat.Overlay.", nameof(backing));
                }

                CreateRaw(path, size, overwrite);
                return;
            case DiskFormat.Overlay:
                if (backing is null)
                {
                    throw new ArgumentException("An overlay needs a backing file (its base).", nameof(backing));
                }

                CreateOverlay(path, backing, overwrite);
                return;
            case DiskFormat.Qcow2:
                break;
            default:
                throw new ArgumentOutOfRangeException(nameof(format), format, "Use DiskFormat.Raw, Qcow2 or Overlay.");
        }

        if (clusterSize < 512 || clusterSize > 1 << Qcow2Format.MaxClusterBits || (clusterSize & (clusterSize - 1)) != 0)
        {
            throw new ArgumentOutOfRangeException(nameof(clusterSize), clusterSize, "A qcow2 cluster size must be a power of two from 512 to 2097152 (2 MiB); 65536 is the usual one.");
        }

        if (extendedL2 && clusterSize < 1 << Qcow2Format.MinExtendedClusterBits)
        {
            throw new ArgumentOutOfRangeException(nameof(clusterSize), clusterSize, $"A qcow2 image with extended L2 entries needs a cluster size of at least {1 << Qcow2Format.MinExtendedClusterBits} (subclusters of 512 bytes); 65536 is the usual one.");
        }

        string fullPath = Path.GetFullPath(path);
        string? backingFormat = null;
        if (backing is not null)
        {
            string fullBacking = Path.GetFullPath(Path.IsPathRooted(backing) ? backing : Path.Combine(Path.GetDirectoryName(fullPath) ?? ".", backing));
            var detected = DetectFormat(fullBacking);
            if (detected == DiskFormat.Overlay)
            {
                throw new DiskImageException(fullBacking, DiskImageError.InvalidFormat, $"'{fullBacking}' is a Virt.Sdk overlay, which cannot back a qcow2 image; use a raw or qcow2 image.");
            }

            backingFormat = detected == DiskFormat.Qcow2 ? "qcow2" : "raw";
            var baseImage = Open(fullBacking, readOnly: true);
            try
            {
                if (size == 0)
                {
                    size = baseImage.Capacity;
                }
            }
            finally
            {
                baseImage.DisposeAsync().AsTask().GetAwaiter().GetResult();
            }
        }

        ValidateSize(size, nameof(size));
        if (size > Qcow2Format.MaxVirtualSize)
        {
            throw new ArgumentOutOfRangeException(nameof(size), size, $"A qcow2 image holds at most {Qcow2Format.MaxVirtualSize} bytes.");
        }

        using var handle = CreateFile(path, overwrite);
        using var store = new FileImageStore(handle, fullPath);
        Qcow2Format.Create(store, size, System.Numerics.BitOperations.Log2((uint)clusterSize), backing, backingFormat, extendedL2);
    }

    /// <summary>The format of the image at <paramref name="path"/>, from its first bytes (qcow2 and overlay magic; anything else is raw).</summary>
    /// <exception cref="DiskImageException">The file is missing.</exception>
    public static DiskFormat DetectFormat(string path)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        Span<byte> start = stackalloc byte[8];
        int n;
        try
        {
            using var handle = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
            n = RandomAccess.Read(handle, start, 0);
        }
        catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException)
        {
            throw new DiskImageException(path, DiskImageError.NotFound, $"The disk image '{path}' does not exist. Create it first or fix the path.", e);
        }
        catch (UnauthorizedAccessException e)
        {
            throw AccessDenied(path, readOnly: true, e);
        }

        if (n >= 4 && Qcow2Format.HasMagic(start))
        {
            return DiskFormat.Qcow2;
        }

        return n == 8 && CopyOnWriteOverlay.HasMagic(start) ? DiskFormat.Overlay : DiskFormat.Raw;
    }

    /// <summary>
    /// Opens an image of any supported format, detected from its contents (<see cref="DetectFormat"/>): a
    /// <see cref="RawFileBlockBackend"/>, <see cref="Qcow2BlockBackend"/> (with its backing chain) or
    /// <see cref="CopyOnWriteOverlay"/> (always writable).
    /// </summary>
    /// <exception cref="DiskImageException">The file is missing, in use or damaged.</exception>
    public static IBlockBackend Open(string path, bool readOnly = false) => DetectFormat(path) switch
    {
        DiskFormat.Qcow2 => Qcow2BlockBackend.Open(path, readOnly),
        DiskFormat.Overlay => CopyOnWriteOverlay.Open(path),
        _ => RawFileBlockBackend.Open(path, readOnly),
    };

    /// <summary>Opens a qcow2 image (see <see cref="Qcow2BlockBackend.Open(string, bool)"/>).</summary>
    public static Qcow2BlockBackend OpenQcow2(string path, bool readOnly = false) => Qcow2BlockBackend.Open(path, readOnly);

    /// <summary>Opens a raw image (see <see cref="RawFileBlockBackend.Open"/>).</summary>
    public static RawFileBlockBackend OpenRaw(string path, bool readOnly = false) => RawFileBlockBackend.Open(path, readOnly);

    /// <summary>Opens an overlay and its base (see <see cref="CopyOnWriteOverlay.Open"/>).</summary>
    public static CopyOnWriteOverlay OpenOverlay(string path) => CopyOnWriteOverlay.Open(path);

    /// <summary>Deletes an image or overlay file that no VM has open.</summary>
    /// <exception cref="DiskImageException">The file is missing or in use.</exception>
    public static void Delete(string path)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        using (OpenLocked(path, readOnly: false))
        {
            // Taking the exclusive lock proves nobody uses the image.
        }

        File.Delete(path);
    }

    internal static void ValidateSize(long size, string parameterName)
    {
        if (size <= 0 || size % SectorSize != 0)
        {
            long suggestion = size <= 0 ? SectorSize : (size + SectorSize - 1) / SectorSize * SectorSize;
            throw new ArgumentOutOfRangeException(parameterName, size,
                $"A disk size must be a positive multiple of {SectorSize} bytes; {size} is not. Use {suggestion}, for example.");
        }
    }

    /// <summary>Opens an image file with the advisory lock that keeps two writers apart.</summary>
    internal static SafeFileHandle OpenLocked(string path, bool readOnly)
    {
        // A lock belongs to the open file description, which a child process shares from its fork until its exec
        // closes it: an image closed here a moment ago can still be locked by a child that another thread of this
        // process (or another process) is starting. A conflict is retried for a short while before it is reported.
        long start = Stopwatch.GetTimestamp();
        while (true)
        {
            var handle = TryOpenLocked(path, readOnly, out var conflict);
            if (handle is not null)
            {
                return handle;
            }

            if (Stopwatch.GetElapsedTime(start) > LockConflictGrace)
            {
                throw InUse(path, readOnly, conflict);
            }

            Thread.Sleep(5);
        }
    }

    /// <summary>How long a lock conflict is retried before the image is reported in use.</summary>
    private static readonly TimeSpan LockConflictGrace = TimeSpan.FromMilliseconds(250);

    /// <summary>Opens and locks the image; null (with the sharing error, if any) when someone holds a conflicting lock.</summary>
    private static SafeFileHandle? TryOpenLocked(string path, bool readOnly, out Exception? conflict)
    {
        conflict = null;
        SafeFileHandle handle;
        try
        {
            handle = File.OpenHandle(path, FileMode.Open, readOnly ? FileAccess.Read : FileAccess.ReadWrite,
                readOnly ? FileShare.Read : FileShare.None);
        }
        catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException)
        {
            throw new DiskImageException(path, DiskImageError.NotFound,
                $"The disk image '{path}' does not exist. Create it first (DiskImage.CreateRaw or CreateOverlay) or fix the path.", e);
        }
        catch (IOException e) when (IsSharingViolation(e))
        {
            conflict = e;
            return null;
        }
        catch (UnauthorizedAccessException e)
        {
            throw AccessDenied(path, readOnly, e);
        }

        // .NET takes the same lock itself unless DOTNET_SYSTEM_IO_DISABLEFILELOCKING is set; taking it here
        // makes the protection independent of that switch.
        if (!OperatingSystem.IsWindows()
            && Interop.Libc.Flock(handle, (readOnly ? Interop.Libc.LOCK_SH : Interop.Libc.LOCK_EX) | Interop.Libc.LOCK_NB) != 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            handle.Dispose();
            if (errno == Interop.Libc.EWOULDBLOCK)
            {
                return null;
            }

            throw new DiskImageException(path, DiskImageError.Other, $"Locking the disk image '{path}' failed: {Marshal.GetPInvokeErrorMessage(errno)} (errno {errno}).");
        }

        if (OperatingSystem.IsLinux() && !QemuLocks.TryAcquire(handle, readOnly))
        {
            handle.Dispose();
            return null;
        }

        return handle;
    }

    internal static async ValueTask WriteZeroesAsync(SafeFileHandle handle, long offset, long length, CancellationToken cancellationToken)
    {
        const int chunk = 1 << 20;
        byte[] zeroes = ArrayPool<byte>.Shared.Rent((int)Math.Min(chunk, length));
        try
        {
            Array.Clear(zeroes);
            while (length > 0)
            {
                int n = (int)Math.Min(zeroes.Length, length);
                await RandomAccess.WriteAsync(handle, zeroes.AsMemory(0, n), offset, cancellationToken).ConfigureAwait(false);
                offset += n;
                length -= n;
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(zeroes);
        }
    }

    private static DiskImageException InUse(string path, bool readOnly, Exception? inner) =>
        new(path, DiskImageError.InUse, readOnly
            ? $"The disk image '{path}' is open for writing by another VM or process. Stop that VM, or give this VM its own overlay of a read-only base."
            : $"The disk image '{path}' is in use by another VM or process. Stop that VM, open the image read-only, or give each VM its own overlay (DiskImage.CreateOverlay).", inner);

    private static bool IsSharingViolation(IOException e)
    {
        // Windows: ERROR_SHARING_VIOLATION (32) / ERROR_LOCK_VIOLATION (33). Unix: .NET's own flock failed with
        // EWOULDBLOCK, reported as the raw errno.
        int code = e.HResult & 0xffff;
        return code is 32 or 33 || (!OperatingSystem.IsWindows() && code == Interop.Libc.EWOULDBLOCK);
    }

    internal static SafeFileHandle CreateFile(string path, bool overwrite)
    {
        try
        {
            return File.OpenHandle(path, overwrite ? FileMode.Create : FileMode.CreateNew, FileAccess.ReadWrite, FileShare.None);
        }
        catch (IOException e) when (!overwrite && File.Exists(path) && !IsSharingViolation(e))
        {
            throw new DiskImageException(path, DiskImageError.AlreadyExists,
                $"The file '{path}' already exists. Delete it first, choose another path, or pass overwrite: true.", e);
        }
        catch (IOException e) when (IsSharingViolation(e))
        {
            throw InUse(path, false, e);
        }
        catch (DirectoryNotFoundException e)
        {
            throw new DiskImageException(path, DiskImageError.NotFound, $"The directory of '{path}' does not exist. Create it first.", e);
        }
        catch (UnauthorizedAccessException e)
        {
            throw new DiskImageException(path, DiskImageError.AccessDenied,
                $"Cannot create the disk image '{path}': permission denied. Choose a directory this user may write to, or change the directory's permissions.", e);
        }
    }

    /// <summary>The file exists but this process may not open it in the mode asked for.</summary>
    internal static DiskImageException AccessDenied(string path, bool readOnly, Exception? inner) =>
        new(path, DiskImageError.AccessDenied, readOnly
            ? $"Cannot read the disk image '{path}': permission denied. Give this user read access to the file (chmod/chown) or run as a user who has it."
            : $"Cannot open the disk image '{path}' for writing: permission denied. Attach it read-only (readOnly: true, or PATH:ro in the CLI), put a writable overlay over it (DiskImage.CreateOverlay), or give this user write access.", inner);
}
