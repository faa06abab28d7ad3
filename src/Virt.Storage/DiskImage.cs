using System.Buffers;
using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace Virt.Storage;

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
        using (var baseHandle = OpenLocked(fullBase, readOnly: true))
        {
            capacity = RandomAccess.GetLength(baseHandle);
        }

        if (capacity <= 0 || capacity % SectorSize != 0)
        {
            throw new DiskImageException(fullBase, DiskImageError.InvalidFormat,
                $"The base image '{fullBase}' is {capacity} bytes long, which is not a positive multiple of {SectorSize}.");
        }

        using var handle = CreateFile(overlayPath, overwrite);
        CopyOnWriteOverlay.Initialize(handle, fullBase, capacity);
    }

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
            throw InUse(path, readOnly, e);
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
                throw InUse(path, readOnly, null);
            }

            throw new DiskImageException(path, DiskImageError.Other, $"Locking the disk image '{path}' failed: {Marshal.GetPInvokeErrorMessage(errno)} (errno {errno}).");
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

    private static SafeFileHandle CreateFile(string path, bool overwrite)
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
    }
}
